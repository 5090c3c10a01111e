#!/usr/bin/env bash
# Benchmark of the injection webhook (not a test): 1,000 AdmissionReviews of
# an Ollama pod that a backend selects (each answered with a full patch)
# against the operator's webhook, over HTTPS with keep-alive, 4 at a time as
# an API server sends them. Prints p50 and p99 latency and the operator's
# peak RSS. Target: p99 <= 5 ms.
#
# The index behind the webhook holds 1,000 LLMBackends (bench/operator.sh's
# shape) so the lookup is not trivially small.
# Uses the world `tests/cluster up` started, or starts (and stops) its own.
# Usage: bench/webhook.sh [reviews, default 1000]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
reviews=${1:-1000}

use_world
run_id=$(printf '%06x' $((RANDOM * 32768 + RANDOM)))
webhook_cleanup() {
  kubectl delete ns -l "attach.dev/bench=$run_id" --wait=false >/dev/null 2>&1 || true
  bench_cleanup
  world_cleanup
}
trap webhook_cleanup EXIT

oha="$cache/oha/bin/oha"
[[ -x "$oha" ]] || cargo install --quiet --locked oha --root "$cache/oha"
(cd "$root" && cargo build --quiet --release --locked -p attach-operator --bin attach-operator)
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=30s -f crds/ >/dev/null

echo "creating 50 namespaces with 20 LLMBackends each" >&2
{
  for n in $(seq 1 50); do
    ns="wh-$run_id-$(printf '%02d' "$n")"
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {attach.dev/bench: "%s"}}\n' "$ns" "$run_id"
  done
} >"$work/ns.yaml"
kubectl create -f "$work/ns.yaml" >/dev/null
for n in $(seq 1 50); do
  ns="wh-$run_id-$(printf '%02d' "$n")"
  for b in $(seq 1 20); do
    app=model-$b
    [[ $n == 1 && $b == 1 ]] && app=ollama
    printf -- '---\napiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: model-%s, namespace: %s}\nspec: {selector: {matchLabels: {app: %s}}, engine: ollama, port: 11434, identityProviderRefs: [{name: corp}]}\n' "$b" "$ns" "$app"
  done
done >"$work/backends.yaml"
kubectl create -f "$work/backends.yaml" >/dev/null

cat >"$work/review.json" <<JSON
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
 "uid":"b1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
 "name":"","namespace":"wh-$run_id-01","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
 "dryRun":true,
 "object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"ollama-","labels":{"app":"ollama"}},
  "spec":{"containers":[{"name":"ollama","image":"ollama/ollama:0.12","ports":[{"name":"http","containerPort":11434}],
   "readinessProbe":{"httpGet":{"path":"/","port":"http"}}}]}}}}
JSON

port=$(free_port)
metrics_port=$(free_port)
"$target/release/attach-operator" --log-format json --log-level warn --leader-elect false \
  --metrics-addr "127.0.0.1:$metrics_port" --webhook-addr "127.0.0.1:$port" \
  --webhook-dns-names 127.0.0.1 --webhook-secret "bench-$run_id" --namespace "wh-$run_id-01" \
  --webhook-configuration "bench-$run_id-absent" >"$work/operator.log" 2>&1 &
op_pid=$!
pids+=("$op_pid")
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && break
  kill -0 "$op_pid" 2>/dev/null || { cat "$work/operator.log" >&2; exit 1; }
  sleep 0.1
done
url="https://127.0.0.1:$port/mutate-pods"
curl -sfk -X POST -H 'Content-Type: application/json' --data-binary "@$work/review.json" "$url" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["response"]; assert r["allowed"] and r.get("patch"), r; print("the review is answered with a patch", file=sys.stderr)'
# Warm-up, then the measured run.
"$oha" --no-tui --insecure -n 100 -c 4 -m POST -H 'Content-Type: application/json' -D "$work/review.json" "$url" >/dev/null
"$oha" --no-tui --insecure --output-format json -n "$reviews" -c 4 -m POST \
  -H 'Content-Type: application/json' -D "$work/review.json" "$url" >"$work/oha.json"
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
python3 - "$work/oha.json" "$rss_kib" "$reviews" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f"{sys.argv[3]} AdmissionReviews (4 concurrent, HTTPS keep-alive): "
      f"p50 {lat['p50']*1000:.3f} ms, p99 {lat['p99']*1000:.3f} ms (target <= 5 ms), "
      f"{d['summary']['requestsPerSec']:.0f} reviews/s, status {codes}")
print(f"operator peak RSS {int(sys.argv[2])/1024:.1f} MiB, with 1,000 LLMBackends indexed")
PY
