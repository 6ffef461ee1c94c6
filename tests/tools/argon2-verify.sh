#!/usr/bin/env bash
# An argon2 check independent of the operator's Rust crate: argon2-cffi (the reference C
# implementation's bindings, from PyPI, pinned, installed once into a venv in the cache).
#
#   tests/tools/argon2-verify.sh PHC_HASH < secret     exit 0: it verifies, 1: it does not
set -euo pipefail
version=25.1.0
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
venv="$cache/venv-argon2-cffi-$version"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import argon2' 2>/dev/null; then
  echo "argon2-verify.sh: installing argon2-cffi $version into $venv" >&2
  # One install at a time (tests call this in parallel).
  exec 9>"$cache/venv-argon2-cffi.lock"
  flock 9
  if ! "$venv/bin/python" -c 'import argon2' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "argon2-cffi==$version"
  fi
fi
exec "$venv/bin/python" -c '
import sys
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, InvalidHashError
secret = sys.stdin.read()
try:
    PasswordHasher().verify(sys.argv[1], secret)
except (VerificationError, InvalidHashError):
    sys.exit(1)
' "$1"
