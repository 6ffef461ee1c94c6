#!/usr/bin/env bash
# Builds the pinned Toxiproxy server (fault injection for tests/integration/faults.rs) from Go
# modules into a version-keyed cache outside the repo, and prints the path of the binary.
# It is rebuilt only when it is missing or its --version is wrong.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOXIPROXY_VERSION=v2.12.0 # keep in step with go.mod
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
bin="$cache/toxiproxy-$TOXIPROXY_VERSION/bin"
out="$bin/toxiproxy-server"
mkdir -p "$bin"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

have=$("$out" --version 2>/dev/null || true)
if [[ $have != *"version ${TOXIPROXY_VERSION#v}"* ]]; then
  echo "toxiproxy: building toxiproxy-server $TOXIPROXY_VERSION from Go modules..." >&2
  start=$SECONDS
  (cd "$here" && go build -trimpath \
    -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION#v}" \
    -o "$out.tmp" github.com/Shopify/toxiproxy/v2/cmd/server)
  mv -f "$out.tmp" "$out"
  echo "toxiproxy: built in $((SECONDS - start))s" >&2
fi
echo "$out"
