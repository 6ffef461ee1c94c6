#!/usr/bin/env bash
# Builds the pinned promtool (Prometheus's rule checker and rule unit-test runner) from Go
# modules into a version-keyed cache outside the repo, and prints its path. Rebuilt only when
# it is missing or its --version is wrong. The module is pinned in tests/tools/promtool/go.mod.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Prometheus 3.x is published as Go module versions v0.3MM.P (v3.MM.P).
module_version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/promtool/go.mod")
[ -n "$module_version" ] || { echo "promtool: no github.com/prometheus/prometheus in $here/promtool/go.mod" >&2; exit 1; }
minor=${module_version#v0.}; patch=${minor#*.}; minor=${minor%%.*}
version="3.$((10#${minor:1})).$patch"
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
bin="$cache/promtool-$version/bin"
mkdir -p "$bin"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

out=$("$bin/promtool" --version 2>/dev/null || true)
if [[ $out != *"version $version "* ]]; then
  echo "promtool: building promtool $version from Go modules (a few minutes on 2 cores, then cached)..." >&2
  start=$SECONDS
  (cd "$here/promtool" && go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version" \
    -o "$bin/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool)
  mv -f "$bin/promtool.tmp" "$bin/promtool"
  echo "promtool: built in $((SECONDS - start))s" >&2
fi
echo "$bin/promtool"
