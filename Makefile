# The one test command is `make test`; the demo is `make demo`.
# Both build what they need into $ATTACH_CACHE (default ~/.cache/attach).
SHELL := /bin/bash
PHASE := scripts/phase

.PHONY: test tools fmt clippy unit e2e orphans demo deps no-golden-update images release-check workflows mutants mutants-diff

## Every check CI runs, each phase timed.
test: no-golden-update deps
	@export ATTACH_PHASE_LOG=$$(mktemp); \
	  trap 'echo; echo "phase times:"; cat $$ATTACH_PHASE_LOG; rm -f $$ATTACH_PHASE_LOG' EXIT; \
	  $(PHASE) fmt     cargo fmt --all --check && \
	  $(PHASE) tools   tests/tools/build.sh && \
	  $(PHASE) workflows scripts/check-workflows && \
	  $(PHASE) clippy  cargo clippy --locked --workspace --all-targets -- -D warnings && \
	  $(PHASE) unit    cargo test --locked --workspace --lib --bins && \
	  $(PHASE) e2e     scripts/e2e && \
	  $(PHASE) orphans scripts/check-orphans

## Refused with ATTACH_UPDATE_GOLDEN set: the tests would rewrite the golden
## files they check, and pass whatever the code does.
no-golden-update:
	@if [ -n "$${ATTACH_UPDATE_GOLDEN+set}" ]; then \
	  echo "ATTACH_UPDATE_GOLDEN is set: make test checks the golden files, it does not rewrite them; unset it" >&2; exit 1; fi

## Install what a fresh machine lacks (apt packages, a JDK for Keycloak).
deps:
	scripts/install-deps

## Build or reuse etcd, kube-apiserver, kube-controller-manager, helm, Keycloak,
## and the node's binaries (containerd, runc, CNI, kubelet, kube-proxy,
## kube-scheduler, CoreDNS, registry, BuildKit, actionlint).
tools:
	tests/tools/build.sh

## Build attach-gateway and attach-operator images with BuildKit, push them to
## the local registry, print digests and sizes.
images: tools
	scripts/images

## actionlint on .github/workflows.
workflows: tools
	scripts/check-workflows

## What of the release workflow can run here: actionlint, SBOM, chart package.
release-check: tools
	scripts/release-check

fmt:
	cargo fmt --all --check

clippy:
	cargo clippy --locked --workspace --all-targets -- -D warnings

unit:
	cargo test --locked --workspace --lib --bins

e2e:
	scripts/e2e

orphans:
	scripts/check-orphans

## Mutation testing of the security modules (cargo-mutants, unit tests only).
## MUTANTS_FILES='sidecar/src/policy/**' narrows it; see scripts/mutants.
mutants:
	scripts/mutants

## The same, only for lines changed since MUTANTS_BASE (default main).
mutants-diff:
	scripts/mutants --diff

## A real node: build the images, bring the world up, helm install, show
## injected pods serving requests, tear it down.
demo: deps tools
	scripts/demo
