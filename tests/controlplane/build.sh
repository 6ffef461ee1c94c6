#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl, etcd and helm from the pinned Go
# modules into a version-keyed cache outside the repo, and prints the bin directory.
# A binary is rebuilt only when it is missing or its --version is wrong.
# KUBEBUILDER_ASSETS pointing at a folder with kube-apiserver and etcd skips those builds.
# --node also builds what a node needs (tests/node/): kubelet, kube-proxy, kube-scheduler.
set -euo pipefail
node=false
[ "${1:-}" = --node ] && node=true
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
mkdir -p "$bin"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "controlplane: $*" >&2; }

# has_version BINARY EXPECTED ARGS...: the binary exists and prints EXPECTED for ARGS.
has_version() {
  local b=$1 want=$2 out; shift 2
  [ -x "$b" ] || return 1
  # Captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.
  out=$("$b" "$@" 2>/dev/null) || return 1
  [[ $out == *"$want"* ]]
}

# build NAME PACKAGE MODULE_DIR LDFLAGS: go build with a ticking progress line.
build() {
  local name=$1 pkg=$2 dir=$3 ld=$4 start=$SECONDS
  log "building $name from Go modules (a cold build of all five takes about 10 minutes on 2 cores)..."
  (cd "$here/$dir" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$bin/$name.tmp" "$pkg") &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15 & wait $! || true
    kill -0 "$pid" 2>/dev/null && log "  $name: still building ($((SECONDS - start))s)"
  done
  if ! wait "$pid"; then log "building $name failed"; return 1; fi
  mv -f "$bin/$name.tmp" "$bin/$name"
  log "built $name in $((SECONDS - start))s"
}

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ld="$k8s_ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

assets=${KUBEBUILDER_ASSETS:-}
for name in kube-apiserver etcd; do
  if [ -n "$assets" ] && [ -x "$assets/$name" ] && [ ! -e "$bin/$name" ]; then
    log "using $name from KUBEBUILDER_ASSETS=$assets"
    ln -sf "$assets/$name" "$bin/$name"
  fi
done

if [ -L "$bin/kube-apiserver" ] || has_version "$bin/kube-apiserver" "Kubernetes $K8S_VERSION" --version; then :; else
  build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver k8s "$k8s_ld"
fi
has_version "$bin/kube-controller-manager" "Kubernetes $K8S_VERSION" --version ||
  build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager k8s "$k8s_ld"
has_version "$bin/kubectl" "Client Version: $K8S_VERSION" version --client ||
  build kubectl k8s.io/kubernetes/cmd/kubectl k8s "$k8s_ld"
if [ -L "$bin/etcd" ] || has_version "$bin/etcd" "etcd Version: ${ETCD_VERSION#v}" --version; then :; else
  build etcd go.etcd.io/etcd/server/v3 etcd "-s -w"
fi
has_version "$bin/helm" "$HELM_VERSION" version --short ||
  build helm helm.sh/helm/v3/cmd/helm helm "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
if $node; then
  for name in kubelet kube-proxy kube-scheduler; do
    has_version "$bin/$name" "Kubernetes $K8S_VERSION" --version ||
      build "$name" "k8s.io/kubernetes/cmd/$name" k8s "$k8s_ld"
  done
fi

echo "$bin"
