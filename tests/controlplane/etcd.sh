#!/usr/bin/env bash
# Kills (SIGKILL) or starts again the etcd of a control plane that up.sh started, with the same
# data directory, port and flags: for tests of the operator riding out an etcd crash.
#
#   etcd.sh kill|start [--dir DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/versions.env"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
run="$cache/controlplane"
action=${1:-}; shift || true
while [ $# -gt 0 ]; do
  case $1 in
    --dir) run=$2; shift 2 ;;
    *) echo "etcd.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
pidfile="$run/etcd.pid"
case $action in
  kill)
    pid=$(cat "$pidfile")
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    echo "controlplane: etcd killed" >&2
    ;;
  start)
    mapfile -t args <"$run/etcd.args"
    setsid "$bin/etcd" "${args[@]}" >>"$run/logs/etcd.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    port=$(cat "$run/etcd.port")
    deadline=$((SECONDS + 60))
    until curl -fsS --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"health":"true"'; do
      [ $SECONDS -lt $deadline ] || { echo "controlplane: etcd not healthy after 60s" >&2; exit 1; }
      sleep 0.1
    done
    echo "controlplane: etcd healthy again" >&2
    ;;
  *) echo "usage: etcd.sh kill|start [--dir DIR]" >&2; exit 2 ;;
esac
