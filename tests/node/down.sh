#!/usr/bin/env bash
# `make node-down`: stops the node that up.sh started and undoes every change it made to this
# machine, also after a crash (up.sh calls it first): processes by their recorded PIDs, the pods'
# processes by their cgroups, containers, network namespaces, mounts, the bridge, iptables rules
# and chains (ours, and kube-proxy's through `kube-proxy --cleanup`), sysctls, cgroups, and the
# state directory.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/node/env.sh
source "$here/env.sh"
# shellcheck source=tests/controlplane/versions.env
source "$here/../controlplane/versions.env"
[ -d "$run" ] || exit 0
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"

# stop NAME...: SIGTERM by recorded PID, 10 s, then SIGKILL.
stop() {
  local pids=() name pid
  for name in "$@"; do
    [ -f "$run/$name.pid" ] || continue
    pid=$(cat "$run/$name.pid")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$run/$name.pid"
  done
  for _ in $(seq 1 100); do
    local left=()
    for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return
    sleep 0.1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do kill -KILL "$pid" 2>/dev/null; done
}

# 1. The node's agents, so that nothing restarts what follows.
stop kube-scheduler kubelet kube-proxy

# 2. The pods' processes: everything in the kubelet's cgroups (cgroupfs driver: kubepods/...).
pod_cgroups=$(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d 2>/dev/null)
for _ in 1 2 3; do
  for cg in $pod_cgroups; do
    [ -f "$cg/cgroup.procs" ] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$cg/cgroup.procs"
  done
  sleep 0.2
done

# 3. Containers and their shims, through containerd (started again if it had died).
if [ -f "$run/containerd/config.toml" ] && ! { [ -f "$run/containerd.pid" ] && kill -0 "$(cat "$run/containerd.pid")" 2>/dev/null; }; then
  setsid containerd --config "$run/containerd/config.toml" >>"$run/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$run/containerd.pid"
  for _ in $(seq 1 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
fi
netns=()
if ctr_ version >/dev/null 2>&1; then
  for c in $(ctr_ containers list -q 2>/dev/null); do
    ns=$(ctr_ containers info "$c" 2>/dev/null | jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty')
    [ -n "$ns" ] && netns+=("$ns")
    ctr_ tasks kill --signal SIGKILL "$c" >/dev/null 2>&1
    ctr_ tasks delete --force "$c" >/dev/null 2>&1
    ctr_ containers delete "$c" >/dev/null 2>&1
  done
fi
stop containerd
# A shim left behind by a containerd that died is found by the socket address it was given.
for p in /proc/[0-9]*; do
  if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $CTR_SOCK "; then
    kill -KILL "${p#/proc/}" 2>/dev/null
  fi
done

# 4. Network namespaces of the pods, then every mount under the state directory (containerd keeps
#    the namespaces there too; Secret volumes, overlay roots, shm), deepest first.
for ns in ${netns[@]+"${netns[@]}"}; do
  umount "$ns" 2>/dev/null; rm -f "$ns"
done
awk -v r="$run/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done

# What the kubelet and CNI keep outside the state directory: /var/log/containers links into our
# pod logs, and libcni's cached results for our network.
for l in /var/log/containers/*.log; do
  [[ $(readlink "$l" 2>/dev/null) == "$run/"* ]] && rm -f "$l"
done
rm -f /var/lib/cni/results/oauthapp-*

# 5. Network: the bridge (its route_localnet goes with it), kube-proxy's rules, ours.
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
[ -x "$bin/kube-proxy" ] && "$bin/kube-proxy" --cleanup >>"$run/logs/kube-proxy-cleanup.log" 2>&1
# The kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), and anything
# kube-proxy left: every KUBE-* chain that was not there before up.sh, jumps to it first.
for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      grep -qxF "$ipt $table $chain" "$run/iptables-chains.before" 2>/dev/null && continue
      "$ipt" -t "$table" -S | awk -v c="$chain" '$1 == "-A" && $2 != c && / -j / && $NF == c' |
        while read -r rule; do
          # shellcheck disable=SC2086 # the rule as iptables -S printed it, re-split into words
          eval "\"\$ipt\" -t \"\$table\" -D ${rule#-A }"
        done
      "$ipt" -t "$table" -F "$chain" 2>/dev/null
    done
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      grep -qxF "$ipt $table $chain" "$run/iptables-chains.before" 2>/dev/null || "$ipt" -t "$table" -X "$chain"
    done
  done
done
while iptables -C FORWARD -j "$FWD_CHAIN" 2>/dev/null; do iptables -D FORWARD -j "$FWD_CHAIN"; done
iptables -F "$FWD_CHAIN" 2>/dev/null && iptables -X "$FWD_CHAIN"
while iptables -t nat -C PREROUTING -j "$API_CHAIN" 2>/dev/null; do iptables -t nat -D PREROUTING -j "$API_CHAIN"; done
iptables -t nat -F "$API_CHAIN" 2>/dev/null && iptables -t nat -X "$API_CHAIN"

# 6. Kernel settings, as they were before up.sh.
if [ -f "$run/sysctl.saved" ]; then
  while IFS= read -r line; do sysctl -qw "$line" >/dev/null 2>&1; done <"$run/sysctl.saved"
  rm -f "$run/sysctl.saved"
fi

# 7. The kubelet's cgroups, now empty (deepest first).
for cg in $pod_cgroups $(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d 2>/dev/null); do
  rmdir "$cg" 2>/dev/null
done

# 8. The control plane, then the state (pod logs, kubelet and containerd roots, certificates).
[ -d "$run/cp" ] && "$here/../controlplane/down.sh" --dir "$run/cp" 2>/dev/null
mounts_left=$(awk -v r="$run/" 'index($2, r) == 1' /proc/self/mounts)
if [ -n "$mounts_left" ]; then
  node_log "mounts still under $run, not removing it:"; echo "$mounts_left" >&2; exit 1
fi
rm -rf "$run"
node_log "stopped, and the host is as it was"
