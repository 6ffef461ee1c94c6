#!/usr/bin/env bash
# Fuzzes the REST API with schemathesis, driven by the API's own OpenAPI document
# (/api-docs/openapi.json): a control plane of its own, the operator binary, a ServiceAccount
# allowed everything on oauthapps and oauthapps/rotate, two apps to aim at. Fails (non-zero exit)
# on any server error (5xx) or any response that does not match the document.
#
#   tests/schemathesis.sh            (make schemathesis; part of make test)
#
# Env: SCHEMATHESIS_MAX_EXAMPLES (default 100 per operation), SCHEMATHESIS_SEED, CARGO.
# schemathesis is installed from PyPI into a venv in the cache, once per pinned version.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { echo "schemathesis.sh: $*" >&2; }

version=4.32.5 # needs Python >= 3.11
# CPython 3.11 before 3.11.8 (and 3.12 before 3.12.2) shares the AST module's recursion count
# between threads (CPython gh-106905): hypothesis, describing a strategy's filter, then fails with
# "AST constructor recursion depth mismatch" now and then (seen once in CI on 3.11.7). A Python
# with the fix is taken where there is one (python3.13 on PATH, or one pyenv installed), python3
# otherwise; and schemathesis runs one worker (below).
fixed='import sys; v = sys.version_info[:3]; sys.exit(not (v >= (3, 13) or (3, 12, 2) <= v < (3, 13) or (3, 11, 8) <= v < (3, 12)))'
python=python3
pyenv_root=$(pyenv root 2>/dev/null || true)
for candidate in python3.13 python3.12 python3 ${pyenv_root:+"$pyenv_root"/versions/3.1[1-9]*/bin/python3}; do
  if "$candidate" -c "$fixed" 2>/dev/null; then
    python=$candidate
    break
  fi
done
py_version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
venv="$cache/venv-schemathesis-$version-py$py_version"
if [ ! -x "$venv/bin/schemathesis" ]; then
  log "installing schemathesis $version into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/oauthapp-schemathesis.XXXXXX")
operator_pid=""
cleanup() {
  status=$?
  if [ -n "$operator_pid" ]; then
    kill "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [ $status -ne 0 ] && [ -f "$work/operator.log" ]; then
    log "operator log (last 40 lines):"
    tail -n 40 "$work/operator.log" >&2 || true
  fi
  "$repo/tests/controlplane/down.sh" --dir "$work/cp" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A control plane of our own; its watchdog stops it if this script dies without cleaning up.
eval "$("$repo/tests/controlplane/up.sh" --dir "$work/cp" --owner-pid $$)"
kubectl apply --server-side -f crds/oauthapps.oauthapp.io.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/oauthapps.oauthapp.io >/dev/null

ns=schemathesis
kubectl create namespace "$ns" >/dev/null
kubectl apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: fuzzer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: fuzzer}
rules:
- apiGroups: ["oauthapp.io"]
  resources: ["oauthapps", "oauthapps/rotate"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fuzzer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fuzzer}
subjects: [{kind: ServiceAccount, name: fuzzer, namespace: $ns}]
EOF
token=$(kubectl create token fuzzer -n "$ns" --duration=1h)

${CARGO:-cargo} build --quiet
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port=$(port)
admin_port=$(port)
# Limits high enough that the fuzzer measures the API, not the limiter (429s are tested elsewhere).
RUST_LOG=info "${CARGO_TARGET_DIR:-target}/debug/oauthapp-operator" run \
  --watch-namespaces "$ns" \
  --api-addr "127.0.0.1:$api_port" --admin-addr "127.0.0.1:$admin_port" \
  --rate-limit-per-caller 10000 --rate-limit-per-caller-burst 10000 \
  --rate-limit-global 10000 --rate-limit-global-burst 10000 \
  >"$work/operator.log" 2>&1 &
operator_pid=$!
echo "$operator_pid" >>"$work/cp/extra.pids" # the watchdog stops it too

ready=""
for _ in $(seq 1 600); do
  if curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then
    ready=yes
    break
  fi
  kill -0 "$operator_pid" 2>/dev/null || { log "the operator exited"; exit 1; }
  sleep 0.1
done
[ -n "$ready" ] || { log "the operator did not become ready"; exit 1; }
# Apps to aim at, once the operator watches.
kubectl apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: oauthapp.io/v1alpha1
kind: OAuthApp
metadata: {name: fuzz-a}
spec: {redirectUris: ["https://a.example.com/cb"]}
---
apiVersion: oauthapp.io/v1alpha1
kind: OAuthApp
metadata: {name: fuzz-b}
spec: {displayName: Fuzz B, scopes: ["read"]}
EOF
kubectl wait -n "$ns" --for=condition=Ready --timeout=60s oauthapp/fuzz-a oauthapp/fuzz-b >/dev/null
id_a=$(kubectl get oauthapp fuzz-a -n "$ns" -o 'jsonpath={.status.appId}')
uid_b=$(kubectl get oauthapp fuzz-b -n "$ns" -o 'jsonpath={.metadata.uid}')

# Random values mostly miss (400, 403, 404); half the time aim at the real namespace and apps,
# so that the 200/201/204 answers are checked against the document too.
cat >"$work/schemathesis.toml" <<EOF
[dictionaries.namespaces]
values = ["$ns"]

[dictionaries.apps]
values = ["$id_a", "$uid_b"]

[parameters]
"query.namespace" = { dictionary = "namespaces", probability = 0.5 }
"path.id" = { dictionary = "apps", probability = 0.5 }
EOF

log "fuzzing http://127.0.0.1:$api_port (schemathesis $version)"
started=$(date +%s)
set +e
# From the scratch directory: schemathesis keeps a cache (.schemathesis/) in the working directory.
(cd "$work" && "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run \
  "http://127.0.0.1:$api_port/api-docs/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
  ${SCHEMATHESIS_SEED:+--seed "$SCHEMATHESIS_SEED"} \
  --generation-database none \
  --workers 1 \
  --request-timeout 30 \
  --no-color \
  --report-dir "$work/report")
status=$?
set -e
log "schemathesis exited $status after $(($(date +%s) - started))s; through the API the operator" \
  "created $(grep -c 'created OAuthApp through the REST API' "$work/operator.log" || true)," \
  "rotated $(grep -c 'rotated client secret' "$work/operator.log" || true) (incl. first secrets) and" \
  "deleted $(grep -c 'deleted OAuthApp through the REST API' "$work/operator.log" || true) apps"
if grep -q "panicked" "$work/operator.log"; then
  log "the operator panicked during the run"
  status=1
fi
exit $status
