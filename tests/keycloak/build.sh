#!/usr/bin/env bash
# Fetches the pinned Keycloak server distribution (org.keycloak:keycloak-quarkus-dist, a zip) with
# Maven, checks its sha256, unpacks it once into a version-keyed cache outside the repo, and prints
# the Keycloak home (bin/kc.sh inside). The integration tests (tests/integration/keycloak.rs) start
# it on loopback. A second call finds the unpacked copy and returns at once.
# Needs: mvn (for the download, through the Maven settings of this machine), unzip or python3, Java 17+.
set -euo pipefail
KEYCLOAK_VERSION=26.7.3
KEYCLOAK_SHA256=27a6535553c3cdcd083872ba40629efafb3475e3b758e0c6f691395561dd0f1f
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
home="$cache/keycloak-$KEYCLOAK_VERSION"
stamp="$home/.oauthapp-sha256"

log() { echo "keycloak: $*" >&2; }

if [ -x "$home/bin/kc.sh" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KEYCLOAK_SHA256" ]; then
  echo "$home"
  exit 0
fi

start=$SECONDS
artifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip"
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/keycloak-unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# dependency:copy resolves the artifact like dependency:get (through Maven's local repository, so
# a second install does not download again) and copies it to a path we know.
log "fetching $artifact with Maven (177 MB)..."
mvn -q -B dependency:copy -Dartifact="$artifact" -DoutputDirectory="$tmp" >&2
zip="$tmp/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
have=$(sha256sum "$zip" | cut -d' ' -f1)
if [ "$have" != "$KEYCLOAK_SHA256" ]; then
  log "checksum mismatch for $artifact: got $have, want $KEYCLOAK_SHA256; remove it from Maven's local repository and retry"
  exit 1
fi

log "unpacking into $home..."
if command -v unzip >/dev/null; then
  unzip -q "$zip" -d "$tmp"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$tmp"
  chmod +x "$tmp/keycloak-$KEYCLOAK_VERSION"/bin/*.sh
fi
rm -rf "$home"
mv "$tmp/keycloak-$KEYCLOAK_VERSION" "$home"
echo "$KEYCLOAK_SHA256" > "$stamp"
log "installed in $((SECONDS - start))s"
echo "$home"
