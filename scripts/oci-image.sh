#!/usr/bin/env bash
# Packs files into a one-layer OCI image FROM scratch, with umoci (no registry, no daemon), and
# writes it as an OCI image-layout tarball that `ctr images import` names NAME.
#
#   oci-image.sh --name NAME --out TAR --user UID:GID --entrypoint PATH [--cmd ARG]...
#                [--label K=V]... [--port N/tcp]... SRC=DEST...
#
# NAME is the full reference (e.g. docker.io/library/oauthapp-operator:0.1.0): it goes into the
# index's `io.containerd.image.name` annotation. SRC is copied to DEST in the image, following a
# symlink to the file behind it. Timestamps are fixed, so the same inputs give the same image.
set -euo pipefail
name="" out="" user="" entrypoint="" cmd=() labels=() ports=() files=()
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --entrypoint) entrypoint=$2; shift 2 ;;
    --cmd) cmd+=(--config.cmd "$2"); shift 2 ;;
    --label) labels+=(--config.label "$2"); shift 2 ;;
    --port) ports+=(--config.exposedports "$2"); shift 2 ;;
    -*) echo "oci-image.sh: unknown option $1" >&2; exit 2 ;;
    *) files+=("$1"); shift ;;
  esac
done
[ -n "$name" ] && [ -n "$out" ] && [ -n "$user" ] && [ -n "$entrypoint" ] && [ ${#files[@]} -gt 0 ] ||
  { echo "usage: oci-image.sh --name NAME --out TAR --user UID:GID --entrypoint PATH SRC=DEST..." >&2; exit 2; }
command -v umoci >/dev/null ||
  { echo "oci-image.sh: umoci is missing (Debian: apt-get install umoci)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
for f in "${files[@]}"; do
  src=${f%%=*} dest=${f#*=}
  mkdir -p "$rootfs$(dirname "$dest")"
  cp -L "$src" "$rootfs$dest"
done
# Fixed owner, modes and times: root-owned and not writable by the image's user.
chmod -R u=rwX,go=rX "$rootfs"
find "$rootfs" -exec touch -h -d @0 {} +

layout="$work/layout"
tag=image
created=1970-01-01T00:00:00Z
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
# The layer is written by tar (umoci 0.4.7's `insert` can cut the last file short); umoci
# compresses it and records it in the image.
tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" .
umoci raw add-layer --image "$layout:$tag" --history.created "$created" \
  --history.created_by "scripts/oci-image.sh" "$work/layer.tar"
config=(--config.user "$user" --config.entrypoint "$entrypoint")
umoci config --image "$layout:$tag" --no-history --created "$created" --os linux --architecture amd64 \
  "${config[@]}" ${cmd[@]+"${cmd[@]}"} ${labels[@]+"${labels[@]}"} ${ports[@]+"${ports[@]}"}
umoci gc --layout "$layout"
# The tag becomes the reference `ctr images import` gives the image.
jq --arg n "$name" '.manifests[0].annotations = {"io.containerd.image.name": $n,
  "org.opencontainers.image.ref.name": ($n | sub(".*:"; ""))}' \
  "$layout/index.json" >"$work/index.json"
mv "$work/index.json" "$layout/index.json"
# Check what was written: every layer decompresses to the files that went in, byte for byte.
check="$work/check"
mkdir -p "$check"
for layer in $(jq -r '.layers[].digest | sub("sha256:"; "")' \
  "$layout/blobs/sha256/$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$layout/index.json")"); do
  tar -xzf "$layout/blobs/sha256/$layer" -C "$check"
done
diff -r "$rootfs" "$check" >&2 || { echo "oci-image.sh: the image's layer differs from its files" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
tar -C "$layout" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
