#!/usr/bin/env bash
# Builds the benchmark's peer, mittwald's kubernetes-secret-generator, from its source (kept
# unmodified in ../shared/peers, or BENCH_PEER_SRC: the directory holding the
# kubernetes-secret-generator source and kubernetes-secret-generator-listen-addrs.patch) into a
# cache outside the repo keyed by a hash of that source and the patch, and prints the binary's
# path. Its dependencies come from the Go module proxy, pinned by its go.sum. The listen-addrs
# patch (METRICS_BIND_ADDRESS, HEALTH_PROBE_BIND_ADDRESS) is applied in a copy, so two
# processes' ports do not clash. Prints nothing and exits 0, with a line on stderr, when the
# source is absent: the bench then skips the peer.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
peers=${BENCH_PEER_SRC:-$repo/../shared/peers}
src="$peers/kubernetes-secret-generator"
patch_file="$peers/kubernetes-secret-generator-listen-addrs.patch"
if [[ ! -f $src/go.mod || ! -f $patch_file ]]; then
  echo "peer: no kubernetes-secret-generator source at $peers (set BENCH_PEER_SRC); skipping the peer" >&2
  exit 0
fi
# The source has no VCS metadata here: key the cache by the content of every file and the patch.
key=$( (cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; sha256sum <"$patch_file") \
  | sha256sum | cut -c1-12)
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
bin="$cache/kubernetes-secret-generator-$key/bin"
out="$bin/kubernetes-secret-generator"
if [[ ! -x $out ]]; then
  command -v go >/dev/null || { echo "peer: go is not installed; skipping the peer" >&2; exit 0; }
  echo "peer: building kubernetes-secret-generator ($key) from Go modules (about 4 minutes on 2 cores, then cached)..." >&2
  start=$SECONDS
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -R "$src" "$work/src"
  (cd "$work/src" && patch -s -p1 <"$patch_file")
  mkdir -p "$bin"
  (cd "$work/src" && GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go build -trimpath -ldflags "-s -w" -o "$out.tmp" ./cmd/manager)
  mv -f "$out.tmp" "$out"
  echo "peer: built in $((SECONDS - start))s" >&2
fi
echo "$out"
