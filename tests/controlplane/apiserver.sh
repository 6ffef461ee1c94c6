#!/usr/bin/env bash
# Stops or starts the kube-apiserver of a control plane that up.sh started, on the same port with
# the same flags: for tests of the operator riding out an API server outage.
#
#   apiserver.sh stop|start [--dir DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/versions.env"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
run="$cache/controlplane"
action=${1:-}; shift || true
while [ $# -gt 0 ]; do
  case $1 in
    --dir) run=$2; shift 2 ;;
    *) echo "apiserver.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
pidfile="$run/kube-apiserver.pid"
case $action in
  stop)
    pid=$(cat "$pidfile")
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    echo "controlplane: kube-apiserver stopped" >&2
    ;;
  start)
    mapfile -t args <"$run/kube-apiserver.args"
    setsid "$bin/kube-apiserver" "${args[@]}" >>"$run/logs/kube-apiserver.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    port=$(cat "$run/apiserver.port")
    pki="$run/pki"
    deadline=$((SECONDS + 120))
    until curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
      "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { echo "controlplane: kube-apiserver not ready after 120s" >&2; exit 1; }
      sleep 0.2
    done
    echo "controlplane: kube-apiserver ready again" >&2
    ;;
  *) echo "usage: apiserver.sh stop|start [--dir DIR]" >&2; exit 2 ;;
esac
