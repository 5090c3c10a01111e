#!/usr/bin/env bash
# Benchmark of the operator (not a test): 1,000 LLMBackends across 50
# namespaces on the real API server, all referring to one
# ClusterIdentityProvider (the world's Keycloak), with rules and quotas.
# The backends are created first; then the operator starts, and the script
# measures the time until every backend is Ready, and the operator's peak RSS.
# Targets: <= 30 s and <= 100 MiB.
# Then the steady state: the operator is restarted, so every backend is
# reconciled once more with nothing to change, and the script reports the API
# writes per reconcile, counted by the API server itself
# (apiserver_request_total: POST, PUT, PATCH, APPLY and DELETE on the
# objects the operator writes). Target: 0.
#
# Uses the world `tests/cluster up` started, or starts (and stops) its own.
# Usage: bench/operator.sh [backends, default 1000] [namespaces, default 50]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$root"
count=${1:-1000}
namespaces=${2:-50}
per_ns=$(( (count + namespaces - 1) / namespaces ))

use_world
operator_cleanup() {
  [[ -n "${run_id:-}" ]] && {
    kubectl delete ns -l "attach.dev/bench=$run_id" --wait=false >/dev/null 2>&1 || true
    kubectl delete clusteridentityprovider "bench-$run_id" --wait=false >/dev/null 2>&1 || true
  }
  bench_cleanup
  world_cleanup
}
trap operator_cleanup EXIT

(cd "$root" && cargo build --quiet --release --locked -p attach-operator --bin attach-operator)
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=30s -f crds/ >/dev/null

run_id=$(printf '%06x' $((RANDOM * 32768 + RANDOM)))
echo "creating 1 ClusterIdentityProvider, $namespaces namespaces, $count LLMBackends" >&2
{
  cat <<YAML
apiVersion: attach.dev/v1alpha1
kind: ClusterIdentityProvider
metadata: {name: bench-$run_id}
spec: {issuer: "$ATTACH_OIDC_ISSUER", insecure: true, audiences: [attach-gateway], preset: keycloak}
YAML
  for n in $(seq 1 "$namespaces"); do
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bench-%s-%02d, labels: {attach.dev/bench: "%s"}}\n' "$run_id" "$n" "$run_id"
  done
} >"$work/base.yaml"
kubectl create -f "$work/base.yaml" >/dev/null
i=0
for n in $(seq 1 "$namespaces"); do
  for b in $(seq 1 "$per_ns"); do
    (( i < count )) || break
    i=$((i + 1))
    cat <<YAML
---
apiVersion: attach.dev/v1alpha1
kind: LLMBackend
metadata: {name: model-$b, namespace: bench-$run_id-$(printf '%02d' "$n")}
spec:
  selector: {matchLabels: {app: model-$b}}
  engine: ollama
  port: 11434
  identityProviderRefs: [{kind: ClusterIdentityProvider, name: bench-$run_id}]
  access:
    rules:
      - {name: power, subjects: {groups: [ai-power-users]}, endpoints: [inference, read]}
      - {name: staff, subjects: {groups: [staff]}, models: ["*:1b"], endpoints: [inference]}
  quotas:
    - {name: per-user, tokensPerMinute: 20000}
    - {name: staff-pool, per: group, subjects: {groups: [staff]}, concurrent: 8}
YAML
  done
done >"$work/backends.yaml"
kubectl create -f "$work/backends.yaml" >/dev/null

ready_count() {
  kubectl get llmbackends -A -l '!attach.dev/none' -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null \
    | grep -c "^bench-$run_id-.* True$" || true
}

metrics_port=$(free_port)
start_operator() {
  "$target/release/attach-operator" --log-format json --log-level warn \
    --metrics-addr "127.0.0.1:$metrics_port" --lease-name "bench-$run_id" >>"$work/operator.log" 2>&1 &
  op_pid=$!
  pids+=("$op_pid")
}
reconciles() {
  curl -sf "http://127.0.0.1:$metrics_port/metrics" \
    | awk '/^attach_operator_reconciles_total\{kind="LLMBackend"\}/ {print $2}'
}
# API writes so far, as the API server counts them, on what the operator writes.
api_writes() {
  kubectl get --raw /metrics | python3 -c '
import re, sys
total = 0
for line in sys.stdin:
    if not line.startswith("apiserver_request_total{"):
        continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line))
    if labels.get("verb") in ("POST", "PUT", "PATCH", "APPLY", "DELETE") and labels.get("resource") in (
        "configmaps", "secrets", "llmbackends", "events", "namespaces"):
        total += float(line.rsplit(" ", 1)[1])
print(int(total))'
}
start_operator
started=$(date +%s.%N)
ready=0
while (( ready < count )); do
  kill -0 "$op_pid" 2>/dev/null || { echo "the operator exited:" >&2; tail "$work/operator.log" >&2; exit 1; }
  elapsed=$(echo "$(date +%s.%N) - $started" | bc)
  if (( $(echo "$elapsed > 300" | bc) )); then
    echo "only $ready of $count Ready after 300 s" >&2
    exit 1
  fi
  sleep 0.5
  ready=$(ready_count)
done
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
reconciles=$(reconciles)
printf '%d LLMBackends in %d namespaces Ready after %.1f s (target <= 30 s)\n' "$count" "$namespaces" "$elapsed"
printf 'operator peak RSS %.1f MiB (target <= 100 MiB); %s LLMBackend reconciles\n' \
  "$(echo "$rss_kib / 1024" | bc -l)" "${reconciles:-?}"

# The steady state: let the first run settle, restart the operator, and
# count what the second round of reconciles writes.
quiet() { # waits until the reconcile count has not moved for 3 s
  local last=-1 now stable=0
  while (( stable < 6 )); do
    sleep 0.5
    now=$(reconciles); now=${now:-0}
    if [[ "$now" == "$last" ]]; then stable=$((stable + 1)); else stable=0; last=$now; fi
  done
}
quiet
kill -TERM "$op_pid"; wait "$op_pid" 2>/dev/null || true
writes_before=$(api_writes)
start_operator
for _ in $(seq 1 600); do
  now=$(reconciles 2>/dev/null || true)
  [[ -n "$now" ]] && (( ${now%.*} >= count )) && break
  sleep 0.5
done
quiet
steady=$(reconciles)
writes=$(( $(api_writes) - writes_before ))
printf 'steady state (operator restarted, nothing changed): %s reconciles, %d API writes, %s writes per reconcile (target 0)\n' \
  "$steady" "$writes" "$(python3 -c "print(round($writes / max(1, ${steady%.*}), 3))")"
