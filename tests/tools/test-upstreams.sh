#!/usr/bin/env bash
# Builds (or reuses) the test upstreams that read requests with the engines'
# own parsers, in the cache outside the clone, and prints where they are:
#
#   OLLAMA_FAITHFUL=$ATTACH_CACHE/bin/ollama-faithful-<ollama version>-<source hash>
#   VLLM_FAITHFUL_PYTHON=$ATTACH_CACHE/venv/vllm-faithful-<requirements hash>/bin/python
#   VLLM_FAITHFUL_SERVER=<this clone>/tests/tools/vllm-faithful/server.py
#
# Each is rebuilt only when its key changes (a new version or new sources).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
mkdir -p "$cache/bin" "$cache/venv"

log() { printf '[test-upstreams] %s\n' "$*" >&2; }
key() { cat "$@" | sha256sum | cut -c1-12; }

# ollama-faithful: Go, built from the pinned Ollama module without cgo (it
# imports only api, openai, anthropic, middleware and types/model).
src="$here/ollama-faithful"
have=$(cd "$src" && go list -m -f '{{.Version}}' github.com/ollama/ollama)
if [[ "$have" != "$OLLAMA_VERSION" ]]; then
  log "tests/tools/ollama-faithful/go.mod requires ollama $have but versions.env says $OLLAMA_VERSION"
  exit 1
fi
ollama="$cache/bin/ollama-faithful-$OLLAMA_VERSION-$(key "$src/main.go" "$src/go.mod" "$src/go.sum")"
if [[ -x "$ollama" ]]; then
  log "ollama-faithful: cached"
else
  log "ollama-faithful: building against github.com/ollama/ollama $OLLAMA_VERSION"
  tmp=$(mktemp -d)
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags -s -o "$tmp/ollama-faithful" .)
  mv "$tmp/ollama-faithful" "$ollama"
  rmdir "$tmp"
fi

# vllm-faithful: a venv with vLLM's request-parsing stack, pinned.
reqs="$here/vllm-faithful/requirements.txt"
venv="$cache/venv/vllm-faithful-$(key "$reqs")"
if [[ -x "$venv/bin/python" ]]; then
  log "vllm-faithful venv: cached"
else
  log "vllm-faithful venv: installing $reqs"
  rm -rf "$venv.tmp"
  python3 -m venv "$venv.tmp"
  "$venv.tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$reqs"
  "$venv.tmp/bin/python" -c 'import fastapi, pydantic, uvicorn'
  mv "$venv.tmp" "$venv"
fi

echo "OLLAMA_FAITHFUL=$ollama"
echo "VLLM_FAITHFUL_PYTHON=$venv/bin/python"
echo "VLLM_FAITHFUL_SERVER=$here/vllm-faithful/server.py"
