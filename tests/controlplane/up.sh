#!/usr/bin/env bash
# Starts a real control plane on free loopback ports: etcd, kube-apiserver (secure port, RBAC,
# ServiceAccount token issuer) and kube-controller-manager (garbage collector, namespace, deployment
# and replicaset controllers: a rollout restart shows as a new ReplicaSet, no kubelet needed). Waits until it is ready, writes an admin kubeconfig and prints the lines to
# eval. Every process is recorded by PID in the state directory; down.sh stops them.
#
#   up.sh [--dir DIR] [--owner-pid PID] [--node] [--audit]
#
# --dir        state directory (default: the cache's controlplane/ folder). A control plane that
#              is already running there is reused.
# --owner-pid  stop everything as soon as process PID is gone (test runs: no process is left
#              behind when the test binary panics, is interrupted or killed).
# --node       for a node (tests/node/up.sh): the ServiceAccount admission plugin on (pods get
#              their token), a client certificate for the kubelets, and the controllers pods need.
# --audit      the API server writes an audit log (Metadata level) of every write request, and of
#              every request made as a ServiceAccount, to DIR/logs/audit.log (fault tests count
#              who asked for what, and when).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/versions.env"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
run="$cache/controlplane"
owner=""
node=false
audit=false
while [ $# -gt 0 ]; do
  case $1 in
    --dir) run=$2; shift 2 ;;
    --owner-pid) owner=$2; shift 2 ;;
    --node) node=true; shift ;;
    --audit) audit=true; shift ;;
    *) echo "up.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "controlplane: $*" >&2; }

bin=$("$here/build.sh")
mkdir -p "$run/logs"
run=$(cd "$run" && pwd)
pki="$run/pki"
kubeconfig="$run/kubeconfig"

print_env() {
  echo "export KUBECONFIG=$kubeconfig"
  echo "export PATH=$bin:\$PATH"
}

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

ready() {
  curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$(cat "$run/apiserver.port")/readyz" >/dev/null 2>&1
}

if alive etcd && alive kube-apiserver && alive kube-controller-manager && ready; then
  log "reusing the control plane in $run"
  print_env
  exit 0
fi
# Anything half-started from an earlier run is stopped first.
"$here/down.sh" --dir "$run" >/dev/null 2>&1 || true

# A free port below the kernel's ephemeral range (32768 and up) and below the ports the tests'
# own processes take (20000 and up, tests/integration/support.rs): a port of the ephemeral range
# can be taken by any outgoing connection between this pick and the server's bind (seen: the
# node's kube-apiserver failing with "address already in use").
free_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    port = random.randrange(10000, 20000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 10000-19999")
'
}

# --- PKI: one CA, a serving cert, an admin client cert, a service-account key pair -------------
if [ ! -f "$pki/admin.crt" ]; then
  log "creating certificates in $pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=oauthapp-operator-test-ca" -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.0.0.1\nextendedKeyUsage=serverAuth\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=system:masters/CN=admin" \
      -keyout admin.key -out admin.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key.ec 2>/dev/null
    openssl pkey -in sa.key.ec -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    rm -f ./*.csr ./*.ext sa.key.ec
    chmod 600 ./*.key
  )
fi

etcd_port=$(free_port)
etcd_peer_port=$(free_port)
api_port=$(free_port)
echo "$api_port" >"$run/apiserver.port"

# start NAME CMD...: starts a process in its own session (so a terminal's Ctrl-C or make's exit
# does not reach it), logs to logs/NAME.log, and records its PID.
start() {
  local name=$1; shift
  setsid "$@" >>"$run/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

log "starting etcd on 127.0.0.1:$etcd_port"
# Kept, like the apiserver's, so that a test can restart it (component.sh) with the same data and flags.
echo "$etcd_port" >"$run/etcd.port"
cat >"$run/etcd.args" <<EOF
--name=default
--data-dir=$run/etcd
--listen-client-urls=http://127.0.0.1:$etcd_port
--advertise-client-urls=http://127.0.0.1:$etcd_port
--listen-peer-urls=http://127.0.0.1:$etcd_peer_port
--initial-advertise-peer-urls=http://127.0.0.1:$etcd_peer_port
--initial-cluster=default=http://127.0.0.1:$etcd_peer_port
--unsafe-no-fsync
--log-level=warn
EOF
mapfile -t etcd_args <"$run/etcd.args"
start etcd "$bin/etcd" "${etcd_args[@]}"

# The apiserver's command line is kept so that a test can restart it on the same port.
cat >"$run/kube-apiserver.args" <<EOF
--etcd-servers=http://127.0.0.1:$etcd_port
--bind-address=127.0.0.1
--advertise-address=127.0.0.1
--secure-port=$api_port
--tls-cert-file=$pki/apiserver.crt
--tls-private-key-file=$pki/apiserver.key
--client-ca-file=$pki/ca.crt
--service-cluster-ip-range=10.0.0.0/24
--service-account-issuer=https://127.0.0.1:$api_port/
--service-account-key-file=$pki/sa.pub
--service-account-signing-key-file=$pki/sa.key
--authorization-mode=Node,RBAC
$(if $node; then echo "--kubelet-client-certificate=$pki/admin.crt"; echo "--kubelet-client-key=$pki/admin.key"
  echo --kubelet-preferred-address-types=InternalIP
else echo --disable-admission-plugins=ServiceAccount; fi)
--allow-privileged=true
--endpoint-reconciler-type=none
EOF
if $audit; then
  cat >"$run/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: Metadata
  userGroups: [system:serviceaccounts]
- level: None
EOF
  printf -- '--audit-policy-file=%s\n--audit-log-path=%s\n' "$run/audit-policy.yaml" "$run/logs/audit.log" \
    >>"$run/kube-apiserver.args"
fi
log "starting kube-apiserver $K8S_VERSION on 127.0.0.1:$api_port"
mapfile -t api_args <"$run/kube-apiserver.args"
start kube-apiserver "$bin/kube-apiserver" "${api_args[@]}"

cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: oauthapp-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$pki/admin.crt")
    client-key-data: $(base64 -w0 "$pki/admin.key")
contexts:
- name: oauthapp-local
  context: {cluster: oauthapp-local, user: admin}
current-context: oauthapp-local
EOF
chmod 600 "$kubeconfig"

controllers=garbage-collector-controller,namespace-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller
$node && controllers+=,serviceaccount-controller,root-ca-certificate-publisher-controller,endpointslice-controller,disruption-controller,node-lifecycle-controller
log "starting kube-controller-manager ($controllers)"
start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kubeconfig" \
  --controllers="$controllers" \
  --leader-elect=false --secure-port=0 --root-ca-file="$pki/ca.crt" \
  --service-account-private-key-file="$pki/sa.key"

if [ -n "$owner" ]; then
  # Watchdog: when the owner is gone, stop the control plane and remove its state.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" --dir "$3" --purge' \
    watchdog "$owner" "$here/down.sh" "$run" >/dev/null 2>&1 </dev/null &
  echo $! >"$run/watchdog.pid"
fi

# Ready when /readyz answers and namespace default exists.
deadline=$((SECONDS + 180))
until ready && "$bin/kubectl" --kubeconfig "$kubeconfig" get namespace default >/dev/null 2>&1; do
  for p in etcd kube-apiserver kube-controller-manager; do
    if ! alive "$p"; then
      log "$p exited; the end of its log ($run/logs/$p.log):"
      tail -n 30 "$run/logs/$p.log" >&2
      exit 1
    fi
  done
  if [ $SECONDS -ge $deadline ]; then
    log "not ready after 180s; see $run/logs"
    exit 1
  fi
  sleep 0.5
done
log "ready in ${SECONDS}s"
print_env
