#!/usr/bin/env bash
# Soak (not a test): attach-gateway under 10 minutes of mixed traffic on
# loopback (normal, streaming and OpenAI-streaming callers, callers that
# disconnect mid-stream, slow and idle sockets, an unknown-kid storm, callers
# naming random models), with quotas in Redis (per-user concurrency and
# tokens, and a per-model budget) and the audit log on.
#
# Prints RSS and Redis memory at start and end and their slopes, the
# metrics' size and series, open connections after the
# traffic stops, leaked slots (admissions in flight and Redis leases: must
# be 0), and the tokens the gateway charged against the tokens the model
# reported in the answers the callers read whole.
#
# Usage: bench/soak.sh [seconds, default 600]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
secs=${1:-600}

need redis-server "apt-get install redis-server"
need redis-cli "apt-get install redis-tools"
build_gateway
# The model stand-in is not what is measured: the debug build the tests
# already made will do.
(cd "$root" && cargo build --quiet --locked -p attach-tests --bin attach-mock-model)
mock_bin="$target/debug/attach-mock-model"

model_port=$(free_port)
"$mock_bin" --listen "127.0.0.1:$model_port" >"$work/model.log" 2>&1 &
pids+=("$!")
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

mint_tokens 50 "$work/tokens"
port=$(free_port); admin=$(free_port)
start_gateway soak "$port" "$admin" "$model_port" "
audit: {path: $work/audit.jsonl}
limits:
  firstBytesTimeout: 2s
  headerReadTimeout: 2s
  idleTimeout: 10s
quotas:
  limits:
    - {name: per-user, per: user, concurrent: 8, tokensPerMinute: 100000000}
    - {name: per-model, per: user, models: [\"*\"], tokensPerDay: 100000000}
  store: {type: redis, url: \"redis://127.0.0.1:$redis_port/\", failMode: closed, keyPrefix: \"soak:\"}
access: {allowAll: true}"

echo "soak: ${secs}s of mixed traffic against attach-gateway (pid $gw_pid)" >&2
REDIS_PORT=$redis_port python3 "$root/bench/soak_traffic.py" 127.0.0.1 "$port" "$work/tokens" "$gw_pid" "$secs" >"$work/traffic.json"
sleep 3 # streams cut at the end settle; idle sockets close
curl -sf "http://127.0.0.1:$admin/metrics" >"$work/metrics.txt"
leases=0
for key in $(redis-cli -p "$redis_port" --scan --pattern '{soak:}*:l'); do
  leases=$((leases + $(redis-cli -p "$redis_port" zcard "$key")))
done
rss_now=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$gw_pid/status")
redis_keys=$(redis-cli -p "$redis_port" dbsize)

python3 - "$work/traffic.json" "$work/metrics.txt" "$leases" "$rss_now" "$secs" "$redis_keys" <<'PY'
import json, sys
traffic = json.load(open(sys.argv[1]))
metrics = open(sys.argv[2]).read().splitlines()
leases, rss_now, secs = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def total(prefix, having=""):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics
               if l.startswith(prefix) and having in l and not l.startswith("#"))
s, rss = traffic["stats"], traffic["rss"]
redis_keys = int(sys.argv[6])
def after_warm_up(samples):
    return [r for r in samples if r[0] - samples[0][0] >= min(60, secs / 5)] or samples
def slope_per_minute(samples):
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples) or 1
    return sum((t - mx) * (m - my) for t, m in samples) / den * 60
warm = after_warm_up(rss)
slope = slope_per_minute(warm)
redis = traffic["redis"]
redis_warm = after_warm_up(redis)
charged = total("attach_tokens_total{", 'estimated="false"')
estimated = total("attach_tokens_total{", 'estimated="true"')
print(f"\nattach-gateway soak, {secs:.0f} s of mixed traffic (Redis quotas, audit on)\n")
print(f"requests: {s['ok']} answered 200, {s['refused_429']} 429, {s['refused_401']} 401 (unknown-kid storm), "
      f"{s['other']} other, {s['errors']} client errors")
print(f"abuse: {s['disconnects']} streams dropped mid-way, {s['slow_cut']} slow sockets cut, {s['idle_cut']} idle sockets cut")
print(f"RSS: start {rss[0][1]:.1f} MiB, after warm-up {warm[0][1]:.1f} MiB, end {rss[-1][1]:.1f} MiB "
      f"(now {rss_now:.1f}); slope after warm-up {slope:+.3f} MiB/min")
print(f"Redis used_memory: start {redis[0][1]:.2f} MiB, after warm-up {redis_warm[0][1]:.2f} MiB, "
      f"end {redis[-1][1]:.2f} MiB; slope after warm-up {slope_per_minute(redis_warm):+.3f} MiB/min; {redis_keys} keys")
series = [l for l in metrics if l and not l.startswith("#")]
models = sorted({l.split('model="')[1].split('"')[0] for l in series if 'model="' in l})
print(f"random model names: {s['random_names']} answered; /metrics {sum(len(l) + 1 for l in metrics) / 1024:.1f} KiB, "
      f"{len(series)} series, model labels {models}")
print(f"open connections after the traffic (this /metrics scrape included): {total('attach_connections_open'):.0f}; "
      f"requests in flight: {total('attach_in_flight_requests'):.0f}")
print(f"leaked slots: {total('attach_quota_admissions_in_flight'):.0f} admissions in flight, {leases} Redis leases (must be 0)")
# OpenAI streams whose client did not ask for usage: the gateway asked the
# model for it and removed that event, so those tokens (the mock reports 11
# prompt + 5 completion) are charged but never seen by the client.
hidden = 16 * s["openai_ok"]
print(f"tokens: charged {charged:.0f} from reported usage vs {s['reported_tokens']} reported in answers read whole "
      f"+ {hidden} in {s['openai_ok']} OpenAI streams whose usage event the gateway removed "
      f"(difference {charged - s['reported_tokens'] - hidden:+.0f}); {estimated:.0f} charged as estimates (dropped streams)")
closed = {l.split('reason="')[1].split('"')[0]: float(l.rsplit(' ', 1)[1]) for l in metrics
          if l.startswith("attach_connections_closed_total{")}
print(f"connections cut by bound: {closed}")
print(f"audit lines dropped: {total('attach_audit_lines_dropped_total'):.0f}")
PY
