#!/usr/bin/env bash
# Benchmark of the request path (not a test): one upstream, the same load
# three ways in the same run, and the ratios between them.
#
#   direct   wrk -> upstream
#   nginx    wrk -> nginx proxy_pass (keepalive) -> upstream
#   gateway  wrk -> attach-gateway (valid RS256 JWT) -> upstream
#
# The upstream is an nginx server block answering a small JSON document, so
# the proxies' own cost dominates. Saturation throughput comes from wrk;
# latency at half of the slower proxy's saturation from oha's fixed rate.
# Prints requests/s, p50, p99, ratios, and attach-gateway's peak RSS.
#
# The `chat` cases POST /api/chat with a 1 KiB and a 64 KiB JSON body (the
# gateway reads, judges and forwards the whole body; nginx buffers it in
# memory), saturation only, and print the gateway/nginx ratio of each.
#
# With BENCH_BEFORE_GATEWAY=<an attach-gateway binary> the chat cases also
# run that binary (for example the build before a change) in the same run,
# and print its ratio beside the current one. BENCH_ROUNDS=N (default 1)
# repeats the chat runs N times, the paths interleaved in each round, and
# reports medians: on a shared machine, load from elsewhere then hits every
# path alike.
#
# Usage: bench/gateway.sh [seconds per run, default 10] [cases: version chat, default both]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
secs=${1:-10}
cases=${2:-version chat}

need wrk "apt-get install wrk"
need nginx "apt-get install nginx-light"
oha="$cache/oha/bin/oha"
if [[ " $cases " == *" version "* && ! -x "$oha" ]]; then
  echo "building oha (load generator with a fixed request rate) into $cache/oha" >&2
  cargo install --quiet --locked oha --root "$cache/oha"
fi
build_gateway

up_port=$(free_port); nginx_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port)
start_upstream "$up_port"

# The nginx proxy is a separate instance, so every proxied path pays the
# same process hops to the upstream.
cat >"$work/proxy.conf" <<NGINX
worker_processes 2;
pid $work/proxy.pid;
error_log $work/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  # Request bodies are buffered whole in memory, as the gateway reads them.
  client_body_buffer_size 1m;
  client_max_body_size 32m;
  upstream model { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$work/proxy.conf" -p "$work" -e "$work/proxy-error.log"
pidfiles+=("$work/proxy.pid")

mint_tokens 1 "$work/token"
token=$(cat "$work/token")
# One access rule, written so that every gateway version reads it (the
# BENCH_BEFORE_GATEWAY build too): both judge the same policy.
access='access: {rules: [{name: everyone, subjects: {anyAuthenticated: true}, endpoints: [inference, read]}]}'
start_gateway gateway "$gw_port" "$admin_port" "$up_port" "$access"
check() { # name url [auth]
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' ${3:+-H "Authorization: Bearer $3"} "$2/api/version")
  [[ "$code" == 200 ]] || { echo "$1 answered $code" >&2; cat "$work/gateway.log" >&2; exit 1; }
}
check direct "http://127.0.0.1:$up_port"
check nginx "http://127.0.0.1:$nginx_port"
check gateway "http://127.0.0.1:$gw_port" "$token"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gw_port/api/version")
[[ "$code" == 401 ]] || { echo "gateway let an unauthenticated request through ($code)" >&2; exit 1; }

declare -A url=([direct]="http://127.0.0.1:$up_port" [nginx]="http://127.0.0.1:$nginx_port" [gateway]="http://127.0.0.1:$gw_port")

chat_paths=(direct nginx gateway)
if [[ -n "${BENCH_BEFORE_GATEWAY:-}" && " $cases " == *" chat "* ]]; then
  before_port=$(free_port); before_admin=$(free_port)
  current_bin=$gateway_bin current_pid=$gw_pid
  gateway_bin=$BENCH_BEFORE_GATEWAY
  start_gateway before "$before_port" "$before_admin" "$up_port" "$access"
  gateway_bin=$current_bin
  url[before]="http://127.0.0.1:$before_port"
  before_pid=$gw_pid
  gw_pid=$current_pid
  chat_paths+=(before)
fi
# CPU time (user + system, clock ticks) of the processes serving a path:
# robust against load from elsewhere on a shared machine.
proxy_pids() {
  case $1 in
    gateway) echo "$gw_pid" ;;
    before) echo "$before_pid" ;;
    nginx) m=$(cat "$work/proxy.pid"); echo "$m" $(pgrep -P "$m") ;;
    direct) m=$(cat "$work/upstream.pid"); echo "$m" $(pgrep -P "$m") ;;
  esac
}
cpu_ticks() { local t=0 f; for p in "$@"; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
auth_args() { [[ $1 == gateway || $1 == before ]] && printf '%s\n' -H "Authorization: Bearer $token"; return 0; }

if [[ " $cases " == *" chat "* ]]; then
  for size in 1024 65536; do
    # A chat request of exactly $size bytes: a model, options and one long
    # message (text with a few escapes, as real prompts have).
    python3 - "$size" >"$work/chat-$size.json" <<'PY'
import json, sys
size = int(sys.argv[1])
body = {"model": "llama3.2:1b", "stream": False, "options": {"temperature": 0.2, "num_predict": 128},
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": ""}]}
base = len(json.dumps(body, separators=(",", ":")))
words = ("the quick brown fox \"jumps\" over the lazy dog\n" * (size // 8))
content = words[: size - base]
body["messages"][1]["content"] = content
text = json.dumps(body, separators=(",", ":"))
while len(text.encode()) > size:
    content = content[:-1]
    body["messages"][1]["content"] = content
    text = json.dumps(body, separators=(",", ":"))
body["messages"][1]["content"] = content + " " * (size - len(text.encode()))
sys.stdout.write(json.dumps(body, separators=(",", ":")))
PY
    cat >"$work/chat-$size.lua" <<LUA
local f = assert(io.open("$work/chat-$size.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
    for round in $(seq 1 "${BENCH_ROUNDS:-1}"); do
      echo "== saturation: wrk -t2 -c64 -d${secs}s, POST /api/chat, $size-byte body (round $round)" >&2
      for name in "${chat_paths[@]}"; do
        mapfile -t extra < <(auth_args "$name")
        read -r -a serving < <(proxy_pids "$name")
        t0=$(cpu_ticks "${serving[@]}")
        wrk -t2 -c64 -d"${secs}s" --latency -s "$work/chat-$size.lua" "${extra[@]}" "${url[$name]}/api/chat" >"$work/wrk-chat-$size-$name-$round.txt"
        echo "$t0 $(cpu_ticks "${serving[@]}") $(getconf CLK_TCK)" >"$work/cpu-chat-$size-$name-$round.txt"
        grep -E "Requests/sec|Non-2xx" "$work/wrk-chat-$size-$name-$round.txt" | sed "s/^/  $name: /" >&2
      done
    done
  done
  python3 - "$work" "${BENCH_ROUNDS:-1}" "${chat_paths[@]}" <<'PY'
import re, statistics, sys
work, rounds, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def rps(size, name, r):
    text = open(f"{work}/wrk-chat-{size}-{name}-{r}.txt").read()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        sys.exit(f"{name} answered {bad.group(1)} errors on the {size}-byte chat case")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
med = statistics.median
def cpu_us(size, name, r):
    """CPU microseconds per request of the processes serving the path."""
    t0, t1, hz = map(int, open(f"{work}/cpu-chat-{size}-{name}-{r}.txt").read().split())
    text = open(f"{work}/wrk-chat-{size}-{name}-{r}.txt").read()
    n = int(re.search(r"(\d+) requests in", text).group(1))
    return (t1 - t0) / hz * 1e6 / n
before = "before" in paths
print(f"\nPOST /api/chat (wrk -t2 -c64; medians of {rounds} interleaved round(s))")
print(f"{'body':>8} {'direct':>9} {'nginx':>9} {'gateway':>9} {'gateway/nginx':>14}"
      + (f" {'before':>9} {'before/nginx':>13} {'change':>7}" if before else ""))
for size in (1024, 65536):
    runs = {name: [rps(size, name, r) for r in range(1, rounds + 1)] for name in paths}
    d, n, g = (med(runs[name]) for name in ("direct", "nginx", "gateway"))
    ratio = med([a / b for a, b in zip(runs["gateway"], runs["nginx"])])
    line = f"{size:>8} {d:>9.0f} {n:>9.0f} {g:>9.0f} {ratio:>13.2f}x"
    if before:
        b = med(runs["before"])
        before_ratio = med([a / b for a, b in zip(runs["before"], runs["nginx"])])
        change = med([a / b for a, b in zip(runs["gateway"], runs["before"])]) - 1
        line += f" {b:>9.0f} {before_ratio:>12.2f}x {change:>+6.1%}"
    print(line)
print("\nCPU per request (user + system, µs; the proxy's processes only; medians)")
print(f"{'body':>8} {'nginx':>8} {'gateway':>8} {'nginx/gateway':>14}"
      + (f" {'before':>8} {'nginx/before':>13} {'change':>7}" if before else ""))
for size in (1024, 65536):
    cpu = {name: med([cpu_us(size, name, r) for r in range(1, rounds + 1)]) for name in paths}
    line = f"{size:>8} {cpu['nginx']:>8.1f} {cpu['gateway']:>8.1f} {cpu['nginx']/cpu['gateway']:>13.2f}x"
    if before:
        line += (f" {cpu['before']:>8.1f} {cpu['nginx']/cpu['before']:>12.2f}x"
                 f" {(cpu['nginx']/cpu['gateway'])/(cpu['nginx']/cpu['before'])-1:>+6.1%}")
    print(line)
PY
fi
[[ " $cases " == *" version "* ]] || exit 0

echo "== saturation: wrk -t2 -c64 -d${secs}s, GET /api/version" >&2
for name in direct nginx gateway; do
  mapfile -t extra < <(auth_args "$name")
  wrk -t2 -c64 -d"${secs}s" --latency "${extra[@]}" "${url[$name]}/api/version" >"$work/wrk-$name.txt"
  grep -E "Requests/sec|Non-2xx" "$work/wrk-$name.txt" | sed "s/^/  $name: /" >&2
done

# Half of the slower proxy's saturation, so every path can sustain the rate.
slowest=$(cat "$work"/wrk-nginx.txt "$work"/wrk-gateway.txt | awk '/Requests\/sec/ {print int($2)}' | sort -n | head -n1)
half=$((slowest / 2))
echo "== half of the slower proxy's saturation: oha -q $half -c16 -z ${secs}s" >&2
for name in direct nginx gateway; do
  extra=()
  [[ $name == gateway ]] && extra=(-H "Authorization: Bearer $token")
  "$oha" --no-tui --output-format json -q "$half" -c 16 -z "${secs}s" "${extra[@]}" "${url[$name]}/api/version" >"$work/oha-$name.json"
done

rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$gw_pid/status")
python3 - "$work" "$rss_kib" "$half" <<'PY'
import json, re, sys
work, rss_kib, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def wrk(name):
    text = open(f"{work}/wrk-{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, pct(50), pct(99), int(non2xx.group(1)) if non2xx else 0
def oha(name):
    d = json.load(open(f"{work}/oha-{name}.json"))
    lat = d["latencyPercentiles"]
    ok = d.get("statusCodeDistribution", {})
    return d["summary"]["requestsPerSec"], lat["p50"] * 1000, lat["p99"] * 1000, ok
sat = {n: wrk(n) for n in ("direct", "nginx", "gateway")}
fixed = {n: oha(n) for n in ("direct", "nginx", "gateway")}
print("\nattach-gateway benchmark (GET /api/version, 2 cores shared by load generator, proxies and upstream)\n")
print(f"saturation (wrk -t2 -c64)")
print(f"{'path':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>10} {'vs nginx':>9}")
for n, (rps, p50, p99, bad) in sat.items():
    print(f"{n:<9} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {rps/sat['direct'][0]:>9.2f}x {rps/sat['nginx'][0]:>8.2f}x" + (f"  ({bad} non-2xx!)" if bad else ""))
print(f"\nfixed rate {half} req/s (half of the slower proxy's saturation; oha -c16)")
print(f"{'path':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99 - direct':>13}")
for n, (rps, p50, p99, codes) in fixed.items():
    print(f"{n:<9} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {p99 - fixed['direct'][2]:>12.3f}  status {codes}")
print(f"\nattach-gateway peak RSS (VmHWM): {rss_kib/1024:.1f} MiB")
g, x = sat["gateway"][0], sat["nginx"][0]
print(f"targets: throughput >= 1.0x nginx: {g/x:.2f}x; added p99 at half load <= 0.3 ms: "
      f"{fixed['gateway'][2]-fixed['direct'][2]:.3f} ms; RSS <= 20 MiB: {rss_kib/1024:.1f} MiB")
PY
