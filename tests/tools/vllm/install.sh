#!/usr/bin/env bash
# Installs the real vLLM (CPU) into a virtualenv at VENV_DIR, from the pinned,
# hashed lock beside this script:
#
#   tests/tools/vllm/install.sh VENV_DIR
#
# The venv is built at VENV_DIR.tmp and renamed only once the lock is
# installed and vLLM, torch and transformers import, so an interrupted install
# is never taken for a finished one. When VENV_DIR exists it is reused as is:
# the caller keys VENV_DIR on the lock's hash. A lock file (VENV_DIR.lock)
# serialises concurrent installs of the same venv.
#
# Environment:
#   ATTACH_CACHE   cache root (default ~/.cache/attach). The locked wheels
#                  are kept in $ATTACH_CACHE/pip/wheelhouse (about 3.5 GB), so
#                  a rebuild installs them without downloading: PyPI's file
#                  host sends no caching headers, so pip's own HTTP cache
#                  keeps nothing.
#   VLLM_PYTHON    the interpreter to build the venv from (default python3.11;
#                  the lock holds cp311 wheels)
#
# Run the server with VENV_DIR/bin/python -m ..., see README.md.
set -euo pipefail

log() { printf '[vllm] %s\n' "$*" >&2; }

if [[ $# -ne 1 || -z "$1" ]]; then
  log "usage: $0 VENV_DIR"
  exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
reqs="$here/requirements.txt"
venv=$1
venv=${venv%/}
tmp="$venv.tmp"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$cache/pip}
wheelhouse="$cache/pip/wheelhouse"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
python=${VLLM_PYTHON:-python3.11}

mkdir -p "$(dirname "$venv")" "$PIP_CACHE_DIR" "$wheelhouse"

exec 9>"$venv.lock"
flock 9

if [[ -x "$venv/bin/python" ]]; then
  log "cached: $venv"
  exit 0
fi

if ! command -v "$python" >/dev/null; then
  log "$python not found: the lock holds CPython 3.11 wheels (set VLLM_PYTHON to a Python 3.11)"
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  log "$python is $("$python" -V 2>&1), but the lock holds CPython 3.11 wheels (set VLLM_PYTHON)"
  exit 1
fi

log "installing $reqs into $venv (about 6 GB)"
rm -rf "$tmp"
"$python" -m venv "$tmp"
# Wheels already in the wheelhouse with the locked hash are not fetched again.
log "fetching the locked wheels into $wheelhouse"
nice -n 10 "$tmp/bin/python" -m pip download --quiet --progress-bar off \
  --no-deps --require-hashes --only-binary :all: --dest "$wheelhouse" -r "$reqs"
nice -n 10 "$tmp/bin/python" -m pip install --quiet --progress-bar off \
  --no-index --find-links "$wheelhouse" \
  --no-deps --require-hashes --only-binary :all: -r "$reqs"

log "checking the imports"
(cd / && nice -n 10 "$tmp/bin/python" -c 'import vllm, torch, transformers, tokenizers')

# The venv's scripts name their interpreter by absolute path: point them at
# the final place before moving (the python symlinks need no change).
from=$(printf '%s' "$tmp" | sed 's/[][\.*^$|]/\\&/g')
to=$(printf '%s' "$venv" | sed 's/[\&|]/\\&/g')
{ grep -rlIF --exclude='python*' "$tmp" "$tmp/bin" || true; } | while IFS= read -r script; do
  sed -i "s|$from|$to|g" "$script"
done

rm -rf "$venv"
mv "$tmp" "$venv"
log "installed: $venv"
