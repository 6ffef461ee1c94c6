#!/usr/bin/env bash
# Stops (kill -9) or starts again one process of a control plane that up.sh started, on the same
# port with the same flags and data: for tests of the operator riding out an API server outage or
# an etcd crash.
#
#   component.sh kube-apiserver|etcd stop|start [--dir DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/versions.env"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
run="$cache/controlplane"
usage() { echo "usage: component.sh kube-apiserver|etcd stop|start [--dir DIR]" >&2; exit 2; }
name=${1:-}; action=${2:-}; shift 2 || usage
while [ $# -gt 0 ]; do
  case $1 in
    --dir) run=$2; shift 2 ;;
    *) echo "component.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
# ready: whether the restarted process answers (each has its own health endpoint).
case $name in
  kube-apiserver)
    port=$(cat "$run/apiserver.port")
    pki="$run/pki"
    ready() {
      curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$port/readyz" >/dev/null 2>&1
    }
    ;;
  etcd)
    port=$(cat "$run/etcd.port")
    ready() { curl -fsS --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"health":"true"'; }
    ;;
  *) usage ;;
esac
pidfile="$run/$name.pid"
case $action in
  stop)
    pid=$(cat "$pidfile")
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    echo "controlplane: $name stopped (kill -9)" >&2
    ;;
  start)
    mapfile -t args <"$run/$name.args"
    setsid "$bin/$name" "${args[@]}" >>"$run/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    deadline=$((SECONDS + 120))
    until ready; do
      [ $SECONDS -lt $deadline ] || { echo "controlplane: $name not ready after 120s" >&2; exit 1; }
      sleep 0.1
    done
    echo "controlplane: $name ready again" >&2
    ;;
  *) usage ;;
esac
