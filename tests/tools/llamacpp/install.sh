#!/usr/bin/env bash
# Builds the llama.cpp server venv (llama-cpp-python[server], pinned in
# requirements.txt beside this script) at VENV_DIR.
#
#   tests/tools/llamacpp/install.sh VENV_DIR
#
# The venv is built at VENV_DIR.tmp and renamed to VENV_DIR only once
# `import llama_cpp.server` works, so a half install is never taken for a
# cached one; an existing VENV_DIR is kept as it is. llama.cpp is compiled from
# the sdist with cmake (CPU only, generic x86-64, no BLAS/GPU/OpenMP, no
# multimodal library): 10 minutes of CPU, 7 to 20 minutes on 2 shared cores.
# pip keeps the downloads and the built wheel in $ATTACH_CACHE/pip, so a
# rebuilt venv reuses them (about 20 s). pip keys that wheel by the sdist, not
# by CMAKE_ARGS: whoever changes the flags below must also change the venv's
# cache key (hash this script with requirements.txt) and drop the cached wheel.
#
# The venv is moved after it is built, so its console scripts (bin/pip,
# bin/uvicorn) keep the old path in their #! line: run everything as
# `VENV_DIR/bin/python -m ...` (the server: `python -m llama_cpp.server`).
set -euo pipefail

log() { echo "[llamacpp] $*" >&2; }

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 VENV_DIR" >&2
  exit 2
fi
venv=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
reqs="$here/requirements.txt"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  log "venv: cached at $venv"
  exit 0
fi
if [[ -e "$venv" ]]; then
  log "venv: $venv exists but cannot import llama_cpp.server; rebuilding"
  rm -rf "$venv"
fi

export PIP_CACHE_DIR="$cache/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU only and portable (the venv may be copied into an image); the server
# needs neither the multimodal library nor the llama.cpp tools.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENCL=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
mkdir -p "$PIP_CACHE_DIR" "$(dirname "$venv")"

tmp="$venv.tmp"
rm -rf "$tmp"
log "venv: building at $tmp from $reqs"
python3 -m venv "$tmp"
pip=("$tmp/bin/python" -m pip install --quiet --no-deps)
# Everything but llama-cpp-python first: its build backend must be installed
# before its sdist is built without isolation (so the backend is the pinned one).
"${pip[@]}" -r <(grep -v '^llama-cpp-python' "$reqs")
line=$(grep '^llama-cpp-python' "$reqs")
log "installing $line (builds llama.cpp with cmake unless pip's cache has the wheel)"
start=$SECONDS
nice -n 10 "${pip[@]}" --no-build-isolation "$line"
log "built in $((SECONDS - start)) s"
"$tmp/bin/python" -c 'import llama_cpp.server'
rm -rf "$venv"
mv "$tmp" "$venv"
log "venv: ready at $venv"
