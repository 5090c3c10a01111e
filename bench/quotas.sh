#!/usr/bin/env bash
# Benchmark of quotas (not a test): the same load through attach-gateway
# three ways in one run, each with 10,000 distinct users (10,000 tokens,
# round-robin, so 10,000 budgets):
#
#   auth-only   verification, policy, metering; no quota
#   memory      + a per-user quota in the embedded store
#   redis       + the same quota in Redis
#
# Prints requests/s, p99, the ratio against auth-only, and the gateway's RSS
# after the run. Usage: bench/quotas.sh [seconds per run, default 10]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
secs=${1:-10}
users=${BENCH_USERS:-10000}

need wrk "apt-get install wrk"
need nginx "apt-get install nginx-light"
need redis-server "apt-get install redis-server"
build_gateway

up_port=$(free_port)
start_upstream "$up_port"
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=("$!")

echo "minting $users tokens" >&2
mint_tokens "$users" "$work/tokens"
cat >"$work/users.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/api/version", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
export BENCH_TOKENS="$work/tokens"

quota='quotas:
  limits:
    - {name: per-user, per: user, tokensPerMinute: 1000000000, requestsPerMinute: 1000000000}'
declare -A extra=(
  [auth-only]=""
  [memory]="$quota"
  [redis]="$quota
  store: {type: redis, url: \"redis://127.0.0.1:$redis_port/\", failMode: closed}"
)
results=()
for name in auth-only memory redis; do
  port=$(free_port); admin=$(free_port)
  start_gateway "$name" "$port" "$admin" "$up_port" "${extra[$name]}"
  # Warm-up: every user's token verified and cached, every budget created.
  wrk -t2 -c64 -d5s -s "$work/users.lua" "http://127.0.0.1:$port/api/version" >/dev/null
  wrk -t2 -c64 -d"${secs}s" --latency -s "$work/users.lua" "http://127.0.0.1:$port/api/version" >"$work/wrk-$name.txt"
  grep -q "Non-2xx" "$work/wrk-$name.txt" && { echo "$name answered errors:" >&2; cat "$work/wrk-$name.txt" >&2; exit 1; }
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$gw_pid/status")
  hwm=$(peak_rss_mib "$gw_pid")
  results+=("$name $rss $hwm")
  kill "$gw_pid"
done

python3 - "$work" "$users" "${results[@]}" <<'PY'
import re, sys
work, users, rows = sys.argv[1], int(sys.argv[2]), [r.split() for r in sys.argv[3:]]
def wrk(name):
    text = open(f"{work}/wrk-{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    return rps, p99
base = wrk("auth-only")[0]
print(f"\nattach-gateway quotas, {users} distinct users (GET /api/version, wrk -t2 -c64)\n")
print(f"{'store':<10} {'req/s':>9} {'p99 ms':>8} {'vs auth-only':>13} {'RSS MiB':>8} {'peak MiB':>9}")
for name, rss, hwm in rows:
    rps, p99 = wrk(name)
    print(f"{name:<10} {rps:>9.0f} {p99:>8.3f} {rps/base:>12.2f}x {float(rss):>8.1f} {float(hwm):>9.1f}")
mem = wrk("memory")[0] / base
print(f"\ntargets: memory quotas >= 0.95x auth-only: {mem:.2f}x; RSS <= 40 MiB with {users} users: "
      f"{max(float(r[2]) for r in rows):.1f} MiB peak")
PY
