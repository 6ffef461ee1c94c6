#!/usr/bin/env bash
# Builds the manual (docs/) as a book with the pinned mdBook into target/book/, then checks every
# link and anchor offline with the pinned lychee. Fails on an mdBook error or warning and on any
# broken link or anchor. Both tools are installed with `cargo install --locked` into a
# version-keyed cache outside the repo, and reinstalled only when missing or of the wrong version.
#
# Two checks, because a link means two things:
# - the built book (target/book/*.html, print.html included): links between pages and to the
#   heading ids mdBook gave them. Links that leave the book (`../bench/...`, `../charts/...`)
#   resolve to target/<not book>/ there and exist in no build: that check leaves them out;
# - the Markdown sources (README.md, docs/*.md, and every other Markdown file of the repository,
#   such as the chart's README, which links into docs/), as a reader of the repository follows
#   them: the links that leave the book are checked here, against the repository's files, anchors
#   included.
# Links to the web are not followed (--offline): this checks the repository, not the internet.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mdbook_version=0.5.4
lychee_version=0.24.2
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}

# install CRATE VERSION [cargo install args...]: prints the path of the crate's binary.
install() {
  local crate=$1 version=$2; shift 2
  local dir="$cache/$crate-$version"
  local bin="$dir/bin/$crate" out
  out=$("$bin" --version 2>/dev/null || true)
  if [[ $out != "$crate $version" && $out != "$crate v$version" ]]; then
    echo "docs: installing $crate $version with cargo (minutes on 2 cores, once; then cached)..." >&2
    mkdir -p "$dir"
    local start=$SECONDS
    # From the cache directory, so that no cargo configuration of the repository applies.
    # Built for a run of a second over a few hundred files: optimized at level 1, which builds
    # in about three quarters of the time of the release default (3): 278 s for both here, not 360.
    (cd "$dir" && CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
      cargo install --locked --quiet --force --root "$dir" --version "$version" "$@" "$crate") >&2
    echo "docs: $crate $version installed in $((SECONDS - start))s" >&2
  fi
  echo "$bin"
}

# Only what `mdbook build` needs: no local server, no file watcher.
mdbook=$(install mdbook "$mdbook_version" --no-default-features --features search)
# No e-mail address checks (they need the network).
lychee=$(install lychee "$lychee_version" --no-default-features)

book="$root/target/book"
rm -rf "$book"
# mdBook includes nothing, silently, for an {{#include FILE:ANCHOR}} whose FILE has no such
# ANCHOR (getting-started.md takes the README's first five minutes this way): look first.
while IFS=: read -r page file anchor; do
  [ -n "$anchor" ] || continue
  target="$root/docs/$file"
  if ! grep -q "ANCHOR: *$anchor\b" "$target" 2>/dev/null || ! grep -q "ANCHOR_END: *$anchor\b" "$target"; then
    echo "docs: $page includes $file:$anchor, but $file has no ANCHOR/ANCHOR_END $anchor" >&2
    exit 1
  fi
done < <(grep -o '{{#include [^}]*}}' "$root"/docs/*.md | sed -E 's|^([^:]+):\{\{#include ([^:}]+):?([^}]*)\}\}$|\1:\2:\3|')
# mdBook logs an error and goes on for some faults (an include that finds nothing): its log is
# read too, and any WARN or ERROR line fails the build.
if ! log=$(NO_COLOR=1 "$mdbook" build "$root/docs" 2>&1); then
  echo "$log" >&2
  echo "docs: mdbook build failed" >&2
  exit 1
fi
if grep -Eq '^\s*(WARN|ERROR)' <<<"$log"; then
  echo "$log" >&2
  echo "docs: mdbook build gave warnings or errors (above)" >&2
  exit 1
fi

lychee_args=(--offline --include-fragments --no-progress --mode plain)
status=0
root_re=$(printf '%s' "$root" | sed 's/[][\.*^$+?(){}|]/\\&/g')
# Inside target/, only target/book/ is the book: a link resolved to anywhere else under target/
# left the book (the regex has no look-ahead, hence the spelled-out "not book/").
outside="^file://$root_re/target/([^b]|b[^o]|bo[^o]|boo[^k]|book[^/])"
echo "docs: checking the links and anchors of the built book (target/book/)" >&2
# --no-ignore: target/ is in .gitignore, which lychee otherwise honours. --root-dir: 404.html
# links from the site's root (it is served at any path), which is the book's.
"$lychee" "${lychee_args[@]}" --no-ignore --root-dir "$book" --exclude "$outside" -- "$book" >&2 || status=1
echo "docs: checking the links and anchors of the repository's Markdown files (README.md, docs/, ...)" >&2
# Every Markdown file lychee finds under the root, less what .gitignore names (and the build
# directories, in case there is no .git to read it from).
"$lychee" "${lychee_args[@]}" --extensions md --exclude-path "^$root_re/(target|bench/target)/" -- "$root" >&2 || status=1
if [ "$status" -ne 0 ]; then
  echo "docs: broken links or anchors (above)" >&2
  exit 1
fi
echo "docs: book built in target/book/, every link and anchor found" >&2
