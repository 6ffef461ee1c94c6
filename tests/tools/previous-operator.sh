#!/usr/bin/env bash
# Builds the operator at the previous version (0.1.0, commit $PREVIOUS below: the commit before
# the first change of the day-two work) from this repository's own history, for the upgrade
# test (tests/integration/upgrade.rs). Its source, with the chart and the CRD of that version,
# is kept beside the binary in a commit-keyed cache outside the repo; the directory's path is
# printed. Rebuilt only when the binary is missing. The build shares this checkout's target
# directory: Cargo.lock differs only in the crate's own version, so only the crate is compiled.
set -euo pipefail
PREVIOUS=2ca4535f251e4003e9267a7d864a5087031026d8
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
commit=$(git -C "$repo" rev-parse --verify "$PREVIOUS^{commit}" 2>/dev/null) \
  || { echo "previous-operator: commit $PREVIOUS is not in this clone's history (a shallow clone? git fetch --unshallow)" >&2; exit 1; }
dir="$cache/previous-${commit:0:12}"
if [[ ! -x $dir/oauthapp-operator ]]; then
  echo "previous-operator: building oauthapp-operator at ${commit:0:12} (0.1.0), then cached..." >&2
  start=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/src"
  git -C "$repo" archive "$commit" | tar -x -C "$dir.tmp/src"
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build --locked --quiet \
    --manifest-path "$dir.tmp/src/Cargo.toml" --bin oauthapp-operator
  cp "${CARGO_TARGET_DIR:-$repo/target}/debug/oauthapp-operator" "$dir.tmp/oauthapp-operator.bin"
  # The shared target directory's binary is this checkout's own at the next build: keep a copy.
  mv "$dir.tmp/oauthapp-operator.bin" "$dir.tmp/oauthapp-operator"
  "$dir.tmp/oauthapp-operator" --version | grep -q ' 0\.1\.0$' \
    || { echo "previous-operator: the binary built is not 0.1.0" >&2; exit 1; }
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "previous-operator: built in $((SECONDS - start))s" >&2
fi
echo "$dir"
