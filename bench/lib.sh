# Shared by the benchmark scripts: a scratch folder cleaned up on exit, free
# ports, an upstream nginx answering a small JSON document, test tokens, and
# attach-gateway processes.
# shellcheck shell=bash

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
pids=()
pidfiles=()

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pidfile in "${pidfiles[@]}"; do
    [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap bench_cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "$1 is missing: $2" >&2; exit 1; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

build_gateway() {
  python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography
  (cd "$root" && cargo build --quiet --release --locked -p attach-sidecar --bin attach-gateway)
  gateway_bin="$target/release/attach-gateway"
}

# start_upstream PORT: one nginx worker answering GET /api/tags.
start_upstream() {
  cat >"$work/upstream.conf" <<NGINX
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1;
    location / { default_type application/json; return 200 '{"models":[{"name":"llama3.2:1b"}]}'; }
  }
}
NGINX
  nginx -c "$work/upstream.conf" -p "$work" -e "$work/upstream-error.log"
  pidfiles+=("$work/upstream.pid")
}

bench_issuer="https://bench.attach.test/"

# mint_tokens COUNT OUT: COUNT tokens, one per line, and $work/jwks.json.
mint_tokens() {
  python3 "$root/bench/mint_token.py" "$root/sidecar/testdata/keys/rsa-trusted.pem" \
    "$bench_issuer" attach-gateway "$work/jwks.json" "$1" >"$2"
}

# start_gateway NAME PORT ADMIN_PORT UPSTREAM_PORT [EXTRA_YAML]: sets gw_pid.
# EXTRA_YAML may replace the `audit`, `access` and `upstream` defaults.
start_gateway() {
  local name=$1 port=$2 admin=$3 up=$4 extra=${5:-}
  # Defaults unless EXTRA_YAML sets them: no audit log, and every caller
  # allowed (a config file without `access` denies everything).
  local audit="audit: {enabled: false}" access="access: {allowAll: true}"
  local upstream="upstream: {url: \"http://127.0.0.1:$up\"}"
  grep -q '^audit:' <<<"$extra" && audit=""
  grep -q '^access:' <<<"$extra" && access=""
  grep -q '^upstream:' <<<"$extra" && upstream=""
  cat >"$work/$name.yaml" <<YAML
apiVersion: attach.dev/v1alpha1
kind: GatewayConfig
listen: {address: 127.0.0.1, port: $port}
admin: {address: 127.0.0.1, port: $admin}
$upstream
$audit
$access
issuers:
  - issuer: "$bench_issuer"
    jwksFile: $work/jwks.json
    audiences: [attach-gateway]
    claims: {preset: keycloak}
$extra
YAML
  "$gateway_bin" --config "$work/$name.yaml" --log-level warn >"$work/$name.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "gateway $name did not become ready:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

# peak_rss_mib PID
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# use_world: attach to the world `tests/cluster up` started, or start one
# (then world_cleanup stops it). Sets the world's exports and own_world.
use_world() {
  own_world=
  local env
  if ! env=$(cd "$root" && tests/cluster env 2>/dev/null); then
    echo "starting a world (control plane, Keycloak, Redis)" >&2
    env=$(cd "$root" && tests/cluster up)
    own_world=1
  fi
  eval "$env"
}

world_cleanup() {
  if [[ -n "${own_world:-}" ]]; then (cd "$root" && tests/cluster down); fi
}
