#!/usr/bin/env bash
# Builds (or reuses) the real engines the conformance tests put behind the
# gateway, and the tiny models they serve, in the cache outside the clone,
# and prints where they are:
#
#   OLLAMA=$ATTACH_CACHE/bin/ollama-<version>-<source hash>
#   MODELS=$ATTACH_CACHE/models/<generator hash>   (tiny.gguf, tiny-embed.gguf,
#          their Modelfiles, hf/ for vLLM)
#   LLAMACPP_PYTHON=$ATTACH_CACHE/venv/llamacpp-<requirements hash>/bin/python
#   LLAMACPP_SERVER=<this clone>/tests/tools/llamacpp/serve.py
#   VLLM_PYTHON=$ATTACH_CACHE/venv/vllm-<requirements hash>/bin/python
#   VLLM_SERVER=<this clone>/tests/tools/vllm/serve.py
#   CLIENTS_PYTHON=$ATTACH_CACHE/venv/clients-<requirements hash>/bin/python
#   CLIENTS_DRIVER=<this clone>/tests/tools/clients/drive.py
#
# Each is rebuilt only when its key changes. Cold, the vLLM venv (about 6 GB,
# mostly torch) downloads while Ollama and llama.cpp compile.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
mkdir -p "$cache/bin" "$cache/venv" "$cache/models" "$cache/dl"
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$cache/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[engines] %s\n' "$*" >&2; }
key() { cat "$@" | sha256sum | cut -c1-12; }

# vLLM first, in the background: it is mostly a download.
vllm_venv="$cache/venv/vllm-$(key "$here/vllm/requirements.txt")"
vllm_pid=
if [[ -x "$vllm_venv/bin/python" ]]; then
  log "vllm venv: cached"
else
  log "vllm venv: installing (about 6 GB, once)"
  "$here/vllm/install.sh" "$vllm_venv" &
  vllm_pid=$!
fi

# Ollama, with cgo (its generic CPU ggml backend). The module zip drops
# every vendor/ folder: nlohmann/json, miniaudio and stb_image come from the pinned
# llama-cpp-python sdist, which vendors the same llama.cpp tree.
src="$here/ollama"
have=$(cd "$src" && go list -m -f '{{.Version}}' github.com/ollama/ollama)
if [[ "$have" != "$OLLAMA_VERSION" ]]; then
  log "tests/tools/ollama/go.mod requires ollama $have but versions.env says $OLLAMA_VERSION"
  exit 1
fi
ollama="$cache/bin/ollama-$OLLAMA_VERSION-$(key "$src/main.go" "$src/go.mod" "$src/go.sum")"
if [[ -x "$ollama" ]]; then
  log "ollama $OLLAMA_VERSION: cached"
else
  sdist="$cache/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  if [[ ! -s "$sdist" ]]; then
    log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist: downloading (for the headers Ollama's module lacks)"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$tmp"
    mv "$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" "$sdist"
    rm -rf "$tmp"
  fi
  include=$(mktemp -d)
  vendor="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/vendor"
  tar xzf "$sdist" -C "$include" --strip-components=4 "$vendor/nlohmann" "$vendor/miniaudio" "$vendor/stb"
  log "ollama $OLLAMA_VERSION: building with cgo (about 10 min on 2 cores, once)"
  tmp=$(mktemp -d)
  version=${OLLAMA_VERSION#v}
  (cd "$src" && CPATH="$include" CGO_ENABLED=1 go build -trimpath \
    -ldflags "-s -X github.com/ollama/ollama/version.Version=$version" -o "$tmp/ollama" .)
  mv "$tmp/ollama" "$ollama"
  rm -rf "$tmp" "$include"
fi

# llama.cpp's OpenAI-compatible server (compiles llama.cpp with cmake).
llamacpp_venv="$cache/venv/llamacpp-$(key "$here/llamacpp/requirements.txt" "$here/llamacpp/install.sh")"
if [[ -x "$llamacpp_venv/bin/python" ]]; then
  log "llama.cpp venv: cached"
else
  log "llama.cpp venv: building (about 7 min on 2 cores, once)"
  "$here/llamacpp/install.sh" "$llamacpp_venv"
fi

if [[ -n "$vllm_pid" ]]; then
  wait "$vllm_pid"
fi

# The official client SDKs (openai, ollama).
clients_venv="$cache/venv/clients-$(key "$here/clients/requirements.txt")"
if [[ ! -x "$clients_venv/bin/python" ]]; then
  log "clients venv: installing"
  rm -rf "$clients_venv.tmp"
  python3 -m venv "$clients_venv.tmp"
  "$clients_venv.tmp/bin/python" -m pip install --quiet --no-deps -r "$here/clients/requirements.txt"
  "$clients_venv.tmp/bin/python" -c 'import openai, ollama, langchain_openai'
  mv "$clients_venv.tmp" "$clients_venv"
fi

# The tiny models: GGUF for Ollama and llama.cpp (a venv with `gguf` and
# numpy only), Hugging Face format for vLLM (made in vLLM's venv).
models_venv="$cache/venv/models-$(key "$here/models/requirements.txt")"
if [[ ! -x "$models_venv/bin/python" ]]; then
  log "models venv: installing"
  rm -rf "$models_venv.tmp"
  python3 -m venv "$models_venv.tmp"
  "$models_venv.tmp/bin/python" -m pip install --quiet --no-deps -r "$here/models/requirements.txt"
  "$models_venv.tmp/bin/python" -c 'import gguf, numpy'
  mv "$models_venv.tmp" "$models_venv"
fi
models="$cache/models/$(key "$here/models/requirements.txt" "$here/models/make_gguf.py" \
  "$here/models/make_hf.py" "$here/vllm/requirements.txt")"
if [[ -f "$models/done" ]]; then
  log "models: cached"
else
  log "models: generating"
  rm -rf "$models.tmp"
  mkdir -p "$models.tmp"
  "$models_venv/bin/python" "$here/models/make_gguf.py" "$models.tmp"
  "$vllm_venv/bin/python" "$here/models/make_hf.py" "$models.tmp/hf"
  touch "$models.tmp/done"
  rm -rf "$models"
  mv "$models.tmp" "$models"
fi

echo "OLLAMA=$ollama"
echo "MODELS=$models"
echo "LLAMACPP_PYTHON=$llamacpp_venv/bin/python"
echo "LLAMACPP_SERVER=$here/llamacpp/serve.py"
echo "VLLM_PYTHON=$vllm_venv/bin/python"
echo "VLLM_SERVER=$here/vllm/serve.py"
echo "CLIENTS_PYTHON=$clients_venv/bin/python"
echo "CLIENTS_DRIVER=$here/clients/drive.py"
