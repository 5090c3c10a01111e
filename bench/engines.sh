#!/usr/bin/env bash
# Benchmark of the gateway in front of the real engines (not a test): for
# Ollama, llama.cpp's server and vLLM, each serving the same tiny model made
# here, the same chat request (8 output tokens, temperature 0) straight to
# the engine and through attach-gateway (a valid RS256 JWT, every caller
# allowed, a token quota counting the usage), in the same run:
#
#   added latency p50/p99   gateway minus direct, request by request
#                           (sequential, the two paths interleaved)
#   throughput ratio        gateway/direct requests per second with
#                           BENCH_CONCURRENCY clients (default 4)
#
# With a real model the engine's own time dominates: the gateway's share is
# what users see. Uses the engines of a running world (tests/cluster up), or
# starts one with only the engines.
#
# Usage: bench/engines.sh [requests per path, default 100]
# BENCH_ENGINES="ollama llamacpp vllm" (the default) picks the engines.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
requests=${1:-100}
concurrency=${BENCH_CONCURRENCY:-4}

build_gateway
engines_env=$(tests/tools/engines.sh)
python=$(sed -n 's/^CLIENTS_PYTHON=//p' <<<"$engines_env")

own_world=
if env=$(tests/cluster env 2>/dev/null) && grep -q ATTACH_OLLAMA_URL <<<"$env"; then
  eval "$env"
else
  echo "starting a world with the engines only" >&2
  export ATTACH_STATE_DIR="$work/world" ATTACH_COMPONENTS=engines
  eval "$(tests/cluster up)"
  own_world=1
fi
cleanup_all() { [[ -n "$own_world" ]] && tests/cluster down; bench_cleanup; }
trap cleanup_all EXIT

mint_tokens 1 "$work/token"
cat >"$work/body.json" <<JSON
{"model":"tiny","max_tokens":8,"temperature":0,"stream":false,
 "messages":[{"role":"user","content":"The quick brown fox jumps over the lazy dog."}]}
JSON
quota="quotas: {limits: [{name: per-user, tokensPerDay: 1000000000}]}"

printf '%-10s %9s %9s %9s %9s %10s %10s %8s\n' engine direct-p50 gw-p50 added-p50 added-p99 direct-rps gw-rps ratio
for engine in ${BENCH_ENGINES:-ollama llamacpp vllm}; do
  case $engine in
    ollama) url=$ATTACH_OLLAMA_URL kind=ollama ;;
    llamacpp) url=$ATTACH_LLAMACPP_URL kind=openai ;;
    vllm) url=$ATTACH_VLLM_URL kind=vllm ;;
  esac
  gw_port=$(free_port) admin_port=$(free_port)
  up_port=${url##*:}
  start_gateway "gw-$engine" "$gw_port" "$admin_port" "$up_port" \
    "$quota"$'\n'"upstream: {url: \"$url\", engine: $kind}"
  "$python" bench/engines_load.py --body "$work/body.json" --direct "$url" \
    --gateway "http://127.0.0.1:$gw_port" --token "$work/token" \
    --requests "$requests" --concurrency "$concurrency" >"$work/$engine.json"
  "$python" - "$engine" "$work/$engine.json" <<'PY'
import json, statistics, sys
engine, path = sys.argv[1], sys.argv[2]
rows = {r["path"]: r for r in map(json.loads, open(path))}
d, g = rows["direct"], rows["gateway"]
added = sorted(g["added"])
p99 = added[min(len(added) - 1, round(0.99 * (len(added) - 1)))]
print(f"{engine:<10} {d['p50']:>8.1f}ms {g['p50']:>8.1f}ms {statistics.median(added):>8.2f}ms"
      f" {p99:>8.2f}ms {d['rps']:>10.1f} {g['rps']:>10.1f} {g['rps']/d['rps']:>7.3f}x")
PY
  kill "$gw_pid"
done
echo "gateway peak RSS is in bench/gateway.sh; the engines' own: $(for p in $(pgrep -f 'ollama serve|llama_cpp|vllm' || true); do printf '%s ' "$(awk '/VmHWM/ {printf "%.0fMiB", $2/1024}' /proc/$p/status 2>/dev/null)"; done)"
