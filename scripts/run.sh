#!/usr/bin/env bash
# `make run`: build the operator, find a cluster (the current kubeconfig if it answers, else a
# local control plane started from tests/controlplane/), install the CRD and run the operator in
# the foreground. Extra operator flags: `make run ARGS="--watch-namespaces team-a"`.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "make run: $*" >&2; }

log "building the operator"
cargo build --quiet
bin_dir=$(tests/controlplane/build.sh)
export PATH="$bin_dir:$PATH"

if kubectl version --request-timeout=5s >/dev/null 2>&1; then
  log "using the cluster of the current kubeconfig ($(kubectl config current-context 2>/dev/null || echo in-cluster))"
else
  log "no cluster reachable: starting the local control plane"
  eval "$(tests/controlplane/up.sh)"
  log "local control plane: export KUBECONFIG=$KUBECONFIG  (stop it with: make controlplane-down)"
fi

log "installing the OAuthApp CRD"
kubectl apply --server-side --force-conflicts -f crds/oauthapps.oauthapp.io.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/oauthapps.oauthapp.io >/dev/null

api=${OAUTHAPP_API_ADDR:-127.0.0.1:8080}
admin=${OAUTHAPP_ADMIN_ADDR:-127.0.0.1:9090}
log "running the operator (REST API on $api, metrics on $admin); Ctrl-C stops it"
log "in another shell: export KUBECONFIG=${KUBECONFIG:-~/.kube/config}; kubectl apply -f examples/oauthapp.yaml"
# shellcheck disable=SC2086
exec target/debug/oauthapp-operator run --api-addr "$api" --admin-addr "$admin" ${ARGS:-}
