#!/usr/bin/env bash
# `make e2e`: the chart and the image in pods on a real node (tests/node/), with only the chart's
# RBAC. Each check polls for its condition with a deadline and fails loudly, with the cluster's
# state, at the first that does not hold. Where the machine cannot run a node (no root, no
# containerd) it says so in one line and is skipped; under CI=true that is a failure.
#
#   tests/e2e.sh            builds the image (make image), starts a node, runs the checks, stops it
#   KEEP_NODE=1 tests/e2e.sh   leaves the node running afterwards (make node-down stops it)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/node/env.sh
source tests/node/env.sh

if ! why=$(tests/node/up.sh --check 2>&1); then
  if [ "${CI:-}" = true ]; then
    echo "e2e: FAILED: CI must run the node tests, but ${why#node: }" >&2
    exit 1
  fi
  echo "e2e: SKIPPED: ${why#node: }"
  exit 0
fi

# What the node may change on this machine, to compare after the way down.
host_state() {
  # Rules and chains, by table. A table that nothing has touched is absent from iptables-save,
  # and after the node has gone it is there, empty, with the built-in chains' ACCEPT policies:
  # the same host. So those lines are left out; any rule, chain or other policy counts.
  for save in iptables-save ip6tables-save; do
    "$save" | sed 's/ \[[0-9]*:[0-9]*\]$//' | awk -v cmd="$save" '
      /^#/ || /^COMMIT$/ { next }
      /^\*/ { table = substr($0, 2); next }
      /^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$/ { next }
      { print cmd " " table " " $0 }'
  done
  ip -o link show | awk '{print $2}'
  ip route; ip netns list
  for s in "${SYSCTLS[@]}" net.ipv6.conf.all.forwarding; do echo "$s=$(sysctl -n "$s")"; done
  awk '{print $2}' /proc/self/mounts | sort
  ls -d /sys/fs/cgroup/*/kubepods /var/log/containers/* 2>/dev/null || true
}
before=$(host_state)

t0=$SECONDS
image=$(scripts/image.sh)
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/oauthapp-operator/Chart.yaml)
t_image=$((SECONDS - t0))
[ "${KEEP_NODE:-}" = 1 ] || trap 'tests/node/down.sh' EXIT
t0=$SECONDS
eval "$(tests/node/up.sh --image "$image")"
t_node=$((SECONDS - t0))
t_tests=$SECONDS

NS=oauthapp-system
APPNS=e2e
REL=oauthapp-operator
passed=0

log() { echo "e2e: $*" >&2; }
diagnose() {
  log "the cluster's state:"
  kubectl get nodes,pods,svc,endpointslices,leases -A -o wide >&2 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
  for p in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
    log "--- logs of $p"; kubectl -n "$NS" logs "$p" --tail=40 >&2 || true
  done
}
fail() { log "FAILED: $*"; diagnose; echo "e2e: $passed passed, 1 failed"; exit 1; }
ok() { passed=$((passed + 1)); log "ok $passed - $*"; }
# until_ SECONDS WHAT CMD...: polls CMD until it succeeds, or fails the run after SECONDS.
until_() {
  local secs=$1 what=$2 deadline=$((SECONDS + $1)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what (not after ${secs}s)"
    sleep 0.5
  done
}
pod_ip() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }
secret_value() { kubectl -n "$APPNS" get secret "$1" -o jsonpath='{.data.client_secret}' | base64 -d; }
lease_holder() { kubectl -n "$NS" get lease "$REL" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
# The running operator pod whose replica holds the Lease (its identity is the pod name, then "-PID").
holder_pod() {
  local h p; h=$(lease_holder)
  for p in $(operator_pods); do
    if [ -n "$h" ] && { [ "$h" = "$p" ] || [[ $h == "$p-"* ]]; }; then echo "$p"; return; fi
  done
  return 1
}
operator_pods() { kubectl -n "$NS" get pods -l app.kubernetes.io/name=oauthapp-operator \
  --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}'; }
leader_metric() { curl -fsS --max-time 5 "http://$(pod_ip "$NS" "$1"):9090/metrics" | awk '$1 == "oauthapp_leader" {print $2}'; }

# --- pods cannot reach beyond this machine: the rules, read back (no traffic is sent) ----------
[ "$(iptables -S FORWARD | sed -n 2p)" = "-A FORWARD -j $FWD_CHAIN" ] ||
  fail "the first FORWARD rule is not the jump to $FWD_CHAIN: $(iptables -S FORWARD)"
iptables -C "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP || fail "no DROP for traffic leaving $BRIDGE"
iptables -C "$FWD_CHAIN" ! -i "$BRIDGE" -o "$BRIDGE" -j DROP || fail "no DROP for traffic entering $BRIDGE"
! iptables -t nat -S | grep -E -- "-s $POD_CIDR .*-j (MASQUERADE|SNAT|CNI-)" || fail "pod traffic is masqueraded"
conf=$(cat "$run"/cni/net.d/*.conflist)
[ "$(jq '.plugins[0].ipMasq' <<<"$conf")" = false ] || fail "the CNI bridge masquerades"
[ "$(jq -c '[.plugins[0].ipam.routes[].dst]' <<<"$conf")" = "[\"$SERVICE_CIDR\"]" ] ||
  fail "pods get routes beyond the service range: $(jq -c .plugins[0].ipam.routes <<<"$conf")"
[ "$(sysctl -n net.ipv6.conf.all.forwarding)" = 0 ] || fail "IPv6 forwarding is on"
ok "pods cannot reach beyond this machine: FORWARD drops what leaves or enters $BRIDGE, no masquerading, no default route, no IPv6 forwarding"

# --- the chart, as a user installs it ---------------------------------------------------------
helm install "$REL" charts/oauthapp-operator -n "$NS" --create-namespace \
  --set image.pullPolicy=Never --wait --timeout 5m >/dev/null || fail "helm install"
ready() { [ "$(kubectl -n "$NS" get deploy "$REL" -o jsonpath='{.status.readyReplicas}')" = 2 ]; }
until_ 120 "both replicas Ready" ready
ok "helm install: both replicas Ready (image docker.io/library/oauthapp-operator:$tag, pullPolicy Never)"

# Exactly one replica holds the Lease and reports oauthapp_leader 1; the other reports 0.
one_leader() {
  local holder pods p n=0
  holder=$(holder_pod) || return 1; pods=$(operator_pods)
  for p in $pods; do
    case "$p:$(leader_metric "$p")" in
      "$holder:1") n=$((n + 1)) ;;
      *:0) ;;
      *) return 1 ;;
    esac
  done
  [ "$n" = 1 ] && [ "$(wc -w <<<"$pods")" = 2 ]
}
until_ 60 "exactly one replica holding the Lease and reporting oauthapp_leader 1" one_leader
leader=$(holder_pod)
ok "exactly one replica ($leader) holds the Lease and reports oauthapp_leader 1, the other 0"

# --- an OAuthApp created with kubectl is provisioned -------------------------------------------
kubectl create namespace "$APPNS" >/dev/null
kubectl -n "$APPNS" apply -f - >/dev/null <<EOF
apiVersion: oauthapp.io/v1alpha1
kind: OAuthApp
metadata: {name: portal}
spec:
  displayName: Portal
  redirectUris: [https://portal.example.com/callback]
  scopes: [read]
EOF
app_ready() { [ "$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
until_ 60 "OAuthApp portal Ready" app_ready
SECRET=$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.secretName}')
APP_ID=$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.appId}')
[ -n "$(secret_value "$SECRET")" ] || fail "Secret $SECRET has no client_secret"
ok "an OAuthApp created with kubectl is provisioned: Ready, Secret $SECRET, app id $APP_ID"

# --- pods of our own: a consumer mounting the Secret, a REST client with its own token ---------
kubectl -n "$APPNS" create serviceaccount e2e-client >/dev/null
# The chart's own role for rotation (get the app, create oauthapps/rotate), as a user would bind it.
kubectl -n "$APPNS" create rolebinding e2e-client-rotator --clusterrole=oauthapp-rotator --serviceaccount="$APPNS:e2e-client" >/dev/null
kubectl -n "$APPNS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: consumer}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: consumer
    image: $NODETOOL_IMAGE
    imagePullPolicy: Never
    command: [/nodetool, serve-file, ":8080", /etc/oauth/client_secret]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: oauth, mountPath: /etc/oauth, readOnly: true}]
  volumes:
  - name: oauth
    secret: {secretName: $SECRET}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  serviceAccountName: e2e-client
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: client
    image: $NODETOOL_IMAGE
    imagePullPolicy: Never
    command: [/nodetool, client, ":8080"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
until_ 90 "pods consumer and client Ready" kubectl -n "$APPNS" wait --for=condition=Ready pod/consumer pod/client --timeout=5s
CONSUMER=http://$(pod_ip "$APPNS" consumer):8080/
CLIENT=http://$(pod_ip "$APPNS" client):8080
SVC_IP=$(kubectl -n "$NS" get svc "$REL" -o jsonpath='{.spec.clusterIP}')
ROTATE_URL=http://$SVC_IP:8080/api/v1/oauth-apps/$APP_ID/rotate

# The kubelet is not anonymous and does not allow everything: no credentials get 401, a token of an
# account without nodes/proxy gets 403, the API server's client certificate (kubectl logs) works.
kubelet_url=https://$POD_GATEWAY:10250/pods
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$kubelet_url")
[ "$code" = 401 ] || fail "the kubelet answered $code to an anonymous request, not 401"
token=$(kubectl -n "$APPNS" create token e2e-client)
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $token" "$kubelet_url")
[ "$code" = 403 ] || fail "the kubelet answered $code to a ServiceAccount without nodes/proxy, not 403"
kubectl -n "$NS" logs "$leader" --tail=1 >/dev/null || fail "kubectl logs (the API server to the kubelet)"
ok "the kubelet: anonymous 401, a ServiceAccount without nodes/proxy 403, the API server's certificate (kubectl logs) allowed"

# A rotation by annotation reaches the consumer's mounted file (the kubelet updates Secret volumes).
mounted_is() { [ "$(curl -fsS --max-time 5 "$CONSUMER")" = "$1" ]; }
old=$(secret_value "$SECRET")
until_ 60 "the consumer pod serving the mounted client_secret" mounted_is "$old"
kubectl -n "$APPNS" annotate oapp portal oauthapp.io/rotate=e2e-1 --overwrite >/dev/null
rotated() { [ "$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.observedRotateToken}')" = "$1" ]; }
until_ 60 "the rotation by annotation applied" rotated e2e-1
new=$(secret_value "$SECRET")
[ "$new" != "$old" ] || fail "the annotation did not change the client_secret"
until_ 120 "the consumer pod seeing the new client_secret in its mounted file" mounted_is "$new"
ok "a consumer pod sees the new client_secret in its mounted Secret after a rotation by annotation"

# A REST rotation through the chart's ClusterIP Service, from a pod with its own token.
out=$(curl -fsS --max-time 30 -X POST "$CLIENT/rotate?url=$ROTATE_URL") || fail "the client pod did not answer"
[ "$(jq -r .code <<<"$out")" = 200 ] || fail "REST rotation through $ROTATE_URL: $(jq -c 'del(.body)' <<<"$out") $(jq -r .body <<<"$out" | head -c 300)"
returned=$(jq -r '.body | fromjson | .client_secret' <<<"$out")
[ -n "$returned" ] && [ "$returned" = "$(secret_value "$SECRET")" ] || fail "the secret returned by the REST rotation is not the one in the Secret"
ok "a REST rotation through the Service ($SVC_IP) from a pod with its own ServiceAccount token answers 200 with what the Secret holds"

# REST creates through the Service: the Service spreads them over both replicas, the standby
# included, and each is answered 201 with the secret its Secret holds.
kubectl -n "$APPNS" create rolebinding e2e-client-editor --clusterrole=oauthapp-editor --serviceaccount="$APPNS:e2e-client" >/dev/null
CREATE_URL="http://$SVC_IP:8080/api/v1/oauth-apps?namespace=$APPNS"
made_ready() { [ "$(kubectl -n "$APPNS" get oapp "made-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
for i in 1 2 3 4 5 6; do
  out=$(curl -fsS --max-time 30 -X POST --data "{\"name\": \"made-$i\", \"redirect_uris\": [\"https://made-$i.example.com/cb\"]}" \
    "$CLIENT/rotate?url=$(jq -rn --arg u "$CREATE_URL" '$u | @uri')") || fail "the client pod did not answer"
  [ "$(jq -r .code <<<"$out")" = 201 ] || fail "REST create $i through the Service: $(jq -c 'del(.body)' <<<"$out") $(jq -r .body <<<"$out" | head -c 300)"
  shown=$(jq -r '.body | fromjson | .client_secret' <<<"$out")
  until_ 60 "OAuthApp made-$i Ready" made_ready "$i"
  [ -n "$shown" ] && [ "$shown" = "$(secret_value "made-$i-oauth-client")" ] ||
    fail "the secret returned by REST create $i is not the one in its Secret"
done
ok "six REST creates through the Service (both replicas, the standby included) answer 201 with what each Secret holds"

# --- the leader pod is deleted; a rotation requested during the handover completes once --------
count_before=$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.rotationCount}')
leader=$(holder_pod)
kubectl -n "$NS" delete pod "$leader" --wait=false >/dev/null
kubectl -n "$APPNS" annotate oapp portal oauthapp.io/rotate=e2e-handover --overwrite >/dev/null
new_leader() { local h; h=$(holder_pod) && [ "$h" != "$leader" ] && [ "$(leader_metric "$h")" = 1 ]; }
until_ 90 "another replica taking the Lease after $leader was deleted" new_leader
until_ 90 "the rotation requested during the handover applied" rotated e2e-handover
until_ 120 "two Ready replicas again" ready
until_ 60 "exactly one leader after the handover" one_leader
count_after=$(kubectl -n "$APPNS" get oapp portal -o jsonpath='{.status.rotationCount}')
[ "$count_after" = $((count_before + 1)) ] ||
  fail "the rotation during the handover ran $((count_after - count_before)) times, not once"
[ "$(kubectl -n "$APPNS" get secret "$SECRET" -o jsonpath='{.metadata.annotations.oauthapp\.io/rotation-count}')" = "$count_after" ] ||
  fail "the Secret's rotation-count differs from the status"
ok "deleting the leader pod ($leader) hands over to $(holder_pod); the rotation requested meanwhile ran exactly once"

# --- helm upgrade to a new image tag, with a client rotating once a second throughout ---------
ctr_ images tag "docker.io/library/oauthapp-operator:$tag" "docker.io/library/oauthapp-operator:$tag-e2e" >/dev/null
curl -fsS --max-time 10 -X POST "$CLIENT/loop?url=$ROTATE_URL" || fail "the client pod did not start its loop"
helm upgrade "$REL" charts/oauthapp-operator -n "$NS" --reuse-values --set "image.tag=$tag-e2e" \
  --wait --timeout 5m >/dev/null || fail "helm upgrade"
rolled() {
  local images
  images=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=oauthapp-operator -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | sort -u)
  [ "$images" = "oauthapp-operator:$tag-e2e" ] && ready &&
    [ "$(kubectl -n "$NS" get deploy "$REL" -o jsonpath='{.status.updatedReplicas}')" = 2 ]
}
until_ 180 "the pods rolled to oauthapp-operator:$tag-e2e" rolled
until_ 60 "one leader after the upgrade" one_leader
outcomes=$(curl -fsS --max-time 30 -X POST "$CLIENT/loop/stop") || fail "the client pod did not stop its loop"
n=$(jq length <<<"$outcomes")
bad=$(jq -c '[.[] | select(.error == null and .code != 200 and .code != 409) | {at, code, body}]' <<<"$outcomes")
[ "$bad" = "[]" ] || fail "answers other than 200 or 409 during the upgrade: $bad"
# The longest run of connection errors, from the first failed request to the next answer.
gap=$(jq -r '
  def ts: sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601;
  reduce .[] as $o ({start: null, max: 0, errors: 0};
    if $o.error != null then .errors += 1 | (if .start == null then .start = ($o.at | ts) else . end)
    elif .start != null then .max = ([.max, (($o.at | ts) - .start)] | max) | .start = null
    else . end) | "\(.max) \(.errors)"' <<<"$outcomes")
read -r gap_s errors <<<"$gap"
codes=$(jq -c 'group_by(.code // "error") | map({key: (.[0].code // "error" | tostring), value: length}) | from_entries' <<<"$outcomes")
log "upgrade: $n rotations, $codes; connection errors: $errors, longest gap ${gap_s}s"
[ "$errors" = 0 ] || fail "the client saw $errors connection errors during the upgrade (longest gap ${gap_s}s): $(jq -c '[.[] | select(.error != null)]' <<<"$outcomes")"
ok "helm upgrade to $tag-e2e rolled the pods; a client rotating once a second saw only 200/409 ($codes), no connection error"

if [ "${KEEP_NODE:-}" != 1 ]; then
  trap - EXIT
  t0=$SECONDS
  tests/node/down.sh
  t_down=$((SECONDS - t0))
  after=$(host_state)
  [ "$after" = "$before" ] || fail "make node-down left this machine changed: $(diff <(echo "$before") <(echo "$after"))"
  ok "make node-down stopped the node in ${t_down}s and left this machine as it was (iptables, links, routes, sysctls, mounts, cgroups)"
fi
log "timings: make image ${t_image}s, node up ${t_node}s, checks $((SECONDS - t_tests))s"
echo "e2e: $passed passed, 0 failed"
