#!/usr/bin/env bash
# Stops the control plane that up.sh started, by the PIDs it recorded (never by name).
#
#   down.sh [--dir DIR] [--purge]
#
# --purge also removes the state directory (etcd data, certificates, kubeconfig).
set -uo pipefail
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
run="$cache/controlplane"
purge=false
while [ $# -gt 0 ]; do
  case $1 in
    --dir) run=$2; shift 2 ;;
    --purge) purge=true; shift ;;
    *) echo "down.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -d "$run" ] || exit 0

pids=()
# Processes a test fixture started against this control plane (operators), recorded by PID.
if [ -f "$run/extra.pids" ]; then
  while read -r pid; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  done <"$run/extra.pids"
  rm -f "$run/extra.pids"
fi
for name in kube-controller-manager kube-apiserver etcd; do
  f="$run/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  rm -f "$f"
done
# Give them 10 s to exit cleanly, then SIGKILL what is left.
for _ in $(seq 1 100); do
  left=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
  [ ${#left[@]} -eq 0 ] && break
  sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done

# The watchdog (if any) is last: it may be the one running this script.
if [ -f "$run/watchdog.pid" ]; then
  wd=$(cat "$run/watchdog.pid")
  rm -f "$run/watchdog.pid"
  if [ "$wd" != "$PPID" ] && [ "$wd" != "$$" ]; then kill -TERM "$wd" 2>/dev/null; fi
fi
if $purge; then rm -rf "$run"; fi
echo "controlplane: stopped ($run)" >&2
