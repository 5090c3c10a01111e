#!/usr/bin/env bash
# Builds (or reuses) the real node's binaries from their Go modules, in the
# same cache as build.sh:
#   $ATTACH_CACHE/bin/containerd-<v>/{containerd,containerd-shim-runc-v2,ctr}
#   $ATTACH_CACHE/bin/runc-<v>                 (cgo, seccomp)
#   $ATTACH_CACHE/bin/cni-plugins-<v>/{bridge,host-local,loopback,portmap}
#   $ATTACH_CACHE/bin/{kubelet,kube-proxy,kube-scheduler,kubectl}-<v>
#   $ATTACH_CACHE/bin/coredns-<v>, registry-<v> (wrapper modules: only the
#     plugins and storage driver the node uses), actionlint-<v>
#   $ATTACH_CACHE/bin/buildkit-<v>/{buildkitd,buildctl}
#   $ATTACH_CACHE/bin/pause-<hash of tests/tools/pause>
# A versioned file or folder is rebuilt only when absent; Go's module and
# build caches ($GOMODCACHE, $GOCACHE) are reused across builds.
# Called by build.sh; `build-node.sh syft` builds the SBOM tool only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${ATTACH_CACHE:-$HOME/.cache/attach}
bin="$cache/bin"
mkdir -p "$bin"

log() { printf '[tools] %s\n' "$*" >&2; }

# go_install NAME VERSION CGO TAGS LDFLAGS PACKAGE@VERSION...
# Installs one or more commands of one module; several commands land in the
# folder $bin/NAME-VERSION, a single one in the file $bin/NAME-VERSION.
go_install() {
  local name=$1 version=$2 cgo=$3 tags=$4 ldflags=$5
  shift 5
  local out="$bin/$name-$version"
  if [[ -e "$out" ]]; then
    log "$name $version: cached"
    return
  fi
  log "$name $version: go install (slow on a cold cache)"
  local tmp started=$SECONDS
  tmp=$(mktemp -d "$bin/.build.XXXX")
  GOBIN="$tmp" GOFLAGS= CGO_ENABLED=$cgo go install -trimpath -tags "$tags" -ldflags "-s $ldflags" "$@"
  if (($# == 1)); then
    mv "$tmp"/* "$out"
    rmdir "$tmp"
  else
    mv "$tmp" "$out"
  fi
  log "$name $version: built in $((SECONDS - started))s"
}

# go_build NAME VERSION DIR CGO LDFLAGS PACKAGE...: like go_install, from one
# of the wrapper modules beside this script.
go_build() {
  local name=$1 version=$2 dir=$3 cgo=$4 ldflags=$5
  shift 5
  local out="$bin/$name-$version"
  if [[ -e "$out" ]]; then
    log "$name $version: cached"
    return
  fi
  log "$name $version: go build in tests/tools/$dir (slow on a cold cache)"
  local tmp started=$SECONDS
  tmp=$(mktemp -d "$bin/.build.XXXX")
  (cd "$here/$dir" && CGO_ENABLED=$cgo go build -trimpath -ldflags "-s $ldflags" -o "$tmp/" "$@")
  if (($# == 1)); then
    mv "$tmp"/* "$out"
    rmdir "$tmp"
  else
    mv "$tmp" "$out"
  fi
  log "$name $version: built in $((SECONDS - started))s"
}

if [[ "${1:-}" == syft ]]; then
  go_install syft "$SYFT_VERSION" 0 "" "-X main.version=${SYFT_VERSION#v}" \
    "github.com/anchore/syft/cmd/syft@$SYFT_VERSION"
  exit 0
fi

require_module_version() { # dir module version
  local have
  have=$(cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
  if [[ "$have" != "$3" ]]; then
    log "tests/tools/$1/go.mod requires $2 $have but versions.env says $3"
    exit 1
  fi
}
require_module_version buildkit github.com/moby/buildkit "$BUILDKIT_VERSION"
require_module_version coredns github.com/coredns/coredns "$COREDNS_VERSION"
require_module_version registry github.com/distribution/distribution/v3 "$REGISTRY_VERSION"

# The pause binary is our own code: key it by its source.
pause_hash=$(cat "$here/pause/go.mod" "$here/pause/main.go" | sha256sum | cut -c1-12)
go_build pause "$pause_hash" pause 0 "" .

go_install runc "$RUNC_VERSION" 1 "seccomp urfave_cli_no_docs" \
  "-X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"

go_install containerd "$CONTAINERD_VERSION" 0 "no_btrfs" \
  "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"

cni=github.com/containernetworking/plugins/plugins
go_install cni-plugins "$CNI_PLUGINS_VERSION" 0 "" \
  "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
  "$cni/main/bridge@$CNI_PLUGINS_VERSION" "$cni/ipam/host-local@$CNI_PLUGINS_VERSION" \
  "$cni/main/loopback@$CNI_PLUGINS_VERSION" "$cni/meta/portmap@$CNI_PLUGINS_VERSION"

kminor=${KUBERNETES_VERSION#v1.}
kminor=${kminor%%.*}
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kminor \
  -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kubelet kube-proxy kube-scheduler kubectl; do
  go_build "$cmd" "$KUBERNETES_VERSION" kube 0 "$kube_ldflags" "k8s.io/kubernetes/cmd/$cmd"
done

# Both through wrapper modules that link only what the node uses (see their main.go).
go_build coredns "$COREDNS_VERSION" coredns 0 \
  "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" .

go_build registry "$REGISTRY_VERSION" registry 0 \
  "-X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" .

go_build buildkit "$BUILDKIT_VERSION" buildkit 0 \
  "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
  github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl

go_install actionlint "$ACTIONLINT_VERSION" 0 "" \
  "-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
  "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
