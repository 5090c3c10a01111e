#!/usr/bin/env bash
# Builds (or reuses) the MCP test parts in the cache outside the clone, and
# prints where they are:
#
#   MCP_PYTHON=$ATTACH_CACHE/venv/mcp-<requirements hash>/bin/python
#          (the official MCP Python SDK: server.py's MCPServer, client.py)
#   MCP_SERVER=<this clone>/tests/tools/mcp/server.py
#   MCP_CLIENT_PY=<this clone>/tests/tools/mcp/client.py
#   MCP_NODE_MODULES=$ATTACH_CACHE/node/mcp-<lock hash>/node_modules
#          (the official MCP TypeScript SDK, from package-lock.json)
#   MCP_CLIENT_TS=<this clone>/tests/tools/mcp/client.mjs
#
# Each is rebuilt only when its lock file changes (about 20 s each, cold).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
mkdir -p "$cache/venv" "$cache/node"
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$cache/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_cache=${npm_config_cache:-$cache/npm}

log() { printf '[mcp] %s\n' "$*" >&2; }
key() { cat "$@" | sha256sum | cut -c1-12; }

venv="$cache/venv/mcp-$(key "$here/requirements.txt")"
if [[ ! -x "$venv/bin/python" ]]; then
  log "MCP Python SDK venv: installing"
  rm -rf "$venv.tmp"
  python3 -m venv "$venv.tmp"
  "$venv.tmp/bin/python" -m pip install --quiet --no-deps -r "$here/requirements.txt"
  "$venv.tmp/bin/python" -c 'import mcp.server.mcpserver, mcp.client, uvicorn'
  mv "$venv.tmp" "$venv"
fi

node="$cache/node/mcp-$(key "$here/package.json" "$here/package-lock.json")"
if [[ ! -d "$node/node_modules/@modelcontextprotocol/sdk" ]]; then
  log "MCP TypeScript SDK: installing"
  rm -rf "$node.tmp"
  mkdir -p "$node.tmp"
  cp "$here/package.json" "$here/package-lock.json" "$node.tmp/"
  npm ci --prefix "$node.tmp" --no-audit --no-fund --loglevel=error >&2
  NODE_PATH="$node.tmp/node_modules" node -e 'require("@modelcontextprotocol/sdk/client/index.js")'
  rm -rf "$node"
  mv "$node.tmp" "$node"
fi

echo "MCP_PYTHON=$venv/bin/python"
echo "MCP_SERVER=$here/server.py"
echo "MCP_CLIENT_PY=$here/client.py"
echo "MCP_NODE_MODULES=$node/node_modules"
echo "MCP_CLIENT_TS=$here/client.mjs"
