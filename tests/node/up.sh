#!/usr/bin/env bash
# `make node`: a single-node cluster on this machine. A control plane of its own (tests/controlplane/
# up.sh --node: ServiceAccount tokens in pods, the controllers pods need), kube-scheduler,
# containerd with its own root, state and socket, the kubelet (client certificate, webhook
# authentication and authorization, nothing anonymous), kube-proxy (iptables), a CNI bridge whose
# pods reach this machine only, and the images imported. Every process is recorded by PID in the
# state directory; down.sh stops them and undoes every change to the host. Prints the lines to eval.
#
#   up.sh [--image OCI_TAR]...    import these images too (make node passes the operator's)
#   up.sh --check                 say in one line why this machine cannot run a node (exit 3), or exit 0
#
# Needs root, containerd, runc, the CNI plugins, iptables (Debian: apt-get install containerd runc
# containernetworking-plugins iptables conntrack socat umoci).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/node/env.sh
source "$here/env.sh"
# shellcheck source=tests/controlplane/versions.env
source "$here/../controlplane/versions.env"
images=() check=false
while [ $# -gt 0 ]; do
  case $1 in
    --image) images+=("$2"); shift 2 ;;
    --check) check=true; shift ;;
    *) echo "up.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# --- can this machine run a node? --------------------------------------------------------------
why=""
if [ "$(id -u)" != 0 ]; then why="not root"
else
  for t in containerd containerd-shim-runc-v2 runc ctr iptables ip umoci jq; do
    command -v "$t" >/dev/null || { why="$t is not installed"; break; }
  done
  [ -n "$why" ] || [ -x /usr/lib/cni/bridge ] || why="the CNI plugins are not installed (/usr/lib/cni)"
  [ -n "$why" ] || [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || why="no cgroups"
  [ -n "$why" ] || [ -f /proc/sys/net/bridge/bridge-nf-call-iptables ] || why="the br_netfilter module is not loaded"
fi
if [ -n "$why" ]; then
  echo "node: this machine cannot run a node: $why" >&2
  exit 3
fi
$check && exit 0

# Anything left from an earlier run (a crash included) is stopped and undone first.
"$here/down.sh" >/dev/null 2>&1 || "$here/down.sh"
mkdir -p "$run"/{logs,containerd,kubelet,pod-logs,cni/net.d,cni/ipam}
start_time=$SECONDS

# --- control plane, and binaries ----------------------------------------------------------------
bin=$("$here/../controlplane/build.sh" --node)
eval "$("$here/../controlplane/up.sh" --dir "$run/cp" --node)"
pki="$run/cp/pki"
api_port=$(cat "$run/cp/apiserver.port")

# The helper image (pod sandbox, test clients): a tiny static Go program.
(cd "$here/nodetool" && GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
  -o "$run/nodetool" .)
"$here/../../scripts/oci-image.sh" --name "$NODETOOL_IMAGE" --out "$run/nodetool.oci.tar" \
  --user 65532:65532 --entrypoint /nodetool --cmd pause "$run/nodetool=/nodetool"

# start NAME CMD...: in its own session, logs to logs/NAME.log, PID recorded.
start() {
  local name=$1; shift
  setsid "$@" >>"$run/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}
alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }
# wait_for WHAT SECONDS PROCESS CMD...: polls CMD until it succeeds; fails when PROCESS died.
wait_for() {
  local what=$1 secs=$2 proc=$3 deadline=$((SECONDS + $2)); shift 3
  until "$@" >/dev/null 2>&1; do
    if ! alive "$proc"; then
      node_log "$proc exited while waiting for $what; the end of $run/logs/$proc.log:"
      tail -n 30 "$run/logs/$proc.log" >&2
      exit 1
    fi
    [ $SECONDS -lt "$deadline" ] || { node_log "no $what after ${secs}s; see $run/logs/$proc.log"; exit 1; }
    sleep 0.2
  done
}

# --- certificates and kubeconfigs for the node's components ------------------------------------
# client_kubeconfig NAME CN [O]: a client certificate from the control plane's CA.
client_kubeconfig() {
  local name=$1 cn=$2 o=${3:-} subj
  subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr"
  chmod 600 "$pki/$name.key"
  cat >"$run/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
- name: local
  context: {cluster: local, user: $name}
current-context: local
EOF
}
client_kubeconfig kubelet "system:node:$NODE_NAME" system:nodes
client_kubeconfig kube-proxy system:kube-proxy
client_kubeconfig kube-scheduler system:kube-scheduler

# --- host settings (saved first: down.sh restores them) -----------------------------------------
# The KUBE-* iptables chains there already (none on a clean machine): down.sh removes the others,
# which the kubelet and kube-proxy create.
for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    "$ipt" -t "$table" -S | awk -v p="$ipt $table" '$1 == "-N" && $2 ~ /^KUBE-/ {print p, $2}'
  done
done >"$run/iptables-chains.before"
for s in "${SYSCTLS[@]}"; do
  echo "$s=$(sysctl -n "$s")"
done >"$run/sysctl.saved"
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
# The bridge exists before the first pod, so that pods' packets to the kubernetes Service
# (DNAT to 127.0.0.1) may be routed to loopback on it.
ip link add "$BRIDGE" type bridge
ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"

# CNI: the bridge, no masquerading, and routes to the pod and service ranges only (no default
# route: a pod has no way off this machine even before the FORWARD rules).
cat >"$run/cni/net.d/10-oauthapp.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "oauthapp",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$run/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "$SERVICE_CIDR"}]}},
    {"type": "loopback"}
  ]
}
EOF

# --- containerd ----------------------------------------------------------------------------------
cat >"$run/containerd/config.toml" <<EOF
version = 2
root = "$run/containerd/root"
state = "$run/containerd/state"
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$run/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODETOOL_IMAGE"
  # This machine has no CAP_SYS_RESOURCE: the kubelet's oom_score_adj of -998 would fail every sandbox.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pods' network namespaces under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$run/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
    max_conf_num = 1
EOF
node_log "starting containerd $(containerd --version | awk '{print $3}')"
start containerd containerd --config "$run/containerd/config.toml"
wait_for "containerd socket" 30 containerd ctr_ version

node_log "importing images"
for tar in "$run/nodetool.oci.tar" ${images[@]+"${images[@]}"}; do
  ctr_ images import --no-unpack=false "$tar" >&2
done
ctr_ images label "$NODETOOL_IMAGE" io.cri-containerd.pinned=pinned >/dev/null

# --- kubelet -------------------------------------------------------------------------------------
cat >"$run/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The node's address is the bridge's (the kubelet refuses a loopback node IP): on this machine
# only, reached by the API server for logs and exec, with webhook authentication.
address: $POD_GATEWAY
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CTR_SOCK
# This machine has cgroup v1 (v1.37 refuses it unless told) and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: "$run/pod-logs"
resolvConf: ""
clusterDNS: []
# Imported images are never garbage-collected, and a small disk does not evict pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
# Secret volumes follow their Secret within seconds.
syncFrequency: 5s
maxPods: 30
serializeImagePulls: false
EOF
node_log "starting kubelet"
start kubelet "$bin/kubelet" --config="$run/kubelet/config.yaml" --kubeconfig="$run/kubelet.kubeconfig" \
  --root-dir="$run/kubelet/root" --cert-dir="$run/kubelet/pki" --node-ip="$POD_GATEWAY" \
  --hostname-override="$NODE_NAME"

# --- kube-proxy and kube-scheduler ---------------------------------------------------------------
cat >"$run/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$run/kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack limits and route_localnet alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
node_log "starting kube-proxy and kube-scheduler"
start kube-proxy "$bin/kube-proxy" --config="$run/kube-proxy.yaml"
start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$run/kube-scheduler.kubeconfig" \
  --leader-elect=false --secure-port=0

# --- the rules that keep pods on this machine, and their way to the API server -------------------
wait_for "kube-proxy's iptables rules" 60 kube-proxy iptables -t nat -C PREROUTING -m comment \
  --comment "kubernetes service portals" -j KUBE-SERVICES
iptables -N "$FWD_CHAIN"
iptables -A "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
iptables -A "$FWD_CHAIN" ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
iptables -I FORWARD 1 -j "$FWD_CHAIN"
iptables -t nat -N "$API_CHAIN"
iptables -t nat -A "$API_CHAIN" -s "$POD_CIDR" -d "$API_SERVICE_IP/32" -p tcp --dport 443 \
  -j DNAT --to-destination "127.0.0.1:$api_port"
iptables -t nat -I PREROUTING 1 -j "$API_CHAIN"

# --- node Ready ----------------------------------------------------------------------------------
node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for "Ready node" 120 kubelet node_ready
no_taint() { ! kubectl get node "$NODE_NAME" -o jsonpath='{.spec.taints}' | grep -q not-ready; }
wait_for "node without the not-ready taint" 60 kubelet no_taint
for p in kube-proxy kube-scheduler containerd; do alive "$p" || { node_log "$p exited; see $run/logs/$p.log"; exit 1; }; done
node_log "ready in $((SECONDS - start_time))s (node $NODE_NAME, pods $POD_CIDR, services $SERVICE_CIDR)"
echo "export KUBECONFIG=$run/cp/kubeconfig"
echo "export PATH=$bin:\$PATH"
