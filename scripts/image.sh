#!/usr/bin/env bash
# `make image`: the operator image as an OCI archive, offline (no registry, no Docker daemon).
# FROM scratch: the release binary and the shared libraries `ldd` lists for it (glibc, libgcc_s),
# running as UID 65532, nothing in it writable. Prints the archive's path.
#
#   image.sh [--tag TAG]   (default tag: the chart's appVersion)
#
# The archive names the image docker.io/library/oauthapp-operator:TAG, the name the chart's default
# `image.repository: oauthapp-operator` resolves to, so on a node that imported it
# (`ctr -n k8s.io images import`), `helm install ... --set image.pullPolicy=Never` needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/oauthapp-operator/Chart.yaml)
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || { echo "image.sh: no appVersion in charts/oauthapp-operator/Chart.yaml" >&2; exit 1; }

${CARGO:-cargo} build --release --locked --bin oauthapp-operator >&2
bin=target/release/oauthapp-operator

# Every shared library the binary loads, at the path the loader looks for it ("=> /path", or the
# loader itself, which ldd prints as a bare absolute path).
files=("$bin=/oauthapp-operator")
while read -r lib; do
  files+=("$lib=$lib")
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')

out=target/image/oauthapp-operator-$tag.oci.tar
scripts/oci-image.sh --name "docker.io/library/oauthapp-operator:$tag" --out "$out" \
  --user 65532:65532 --entrypoint /oauthapp-operator --cmd run --port 8080/tcp --port 9090/tcp \
  --label org.opencontainers.image.title=oauthapp-operator \
  --label "org.opencontainers.image.version=$tag" \
  --label "org.opencontainers.image.description=Owns the client secrets of OAuth applications" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "${files[@]}" >&2
echo "image: $out ($(du -m "$out" | cut -f1) MB, docker.io/library/oauthapp-operator:$tag)" >&2
echo "$out"
