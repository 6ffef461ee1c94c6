# oauthapp-operator — every command a developer or CI needs. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CP := tests/controlplane
CARGO ?= cargo

.PHONY: help build controlplane-bin toxiproxy-bin controlplane controlplane-down run test lint chart-lint unit integration crds bench clean-cache openapi schemathesis

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

build: ## build the operator (debug)
	$(CARGO) build

controlplane-bin: ## build the pinned kube-apiserver, kube-controller-manager, kubectl, etcd and helm (cached)
	@$(CP)/build.sh >/dev/null

toxiproxy-bin: ## build the pinned Toxiproxy server for the fault tests (cached)
	@tests/toxiproxy/build.sh >/dev/null

controlplane: ## start a local control plane in the background (reused if running); eval the lines it prints
	@$(CP)/up.sh

controlplane-down: ## stop the local control plane
	@$(CP)/down.sh

run: ## run the operator against the current cluster, or a local control plane when none is reachable
	@scripts/run.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit: ## unit tests (no cluster needed)
	$(CARGO) test --lib --bins

integration: controlplane-bin toxiproxy-bin ## integration tests on a real control plane started for the run
	$(CARGO) test --test integration -- --test-threads=$${TEST_THREADS:-4}

CHART := charts/oauthapp-operator
chart-lint: controlplane-bin ## helm lint --strict and helm template of the chart, with default and each ci/*-values.yaml
	@set -euo pipefail; helm="$$($(CP)/build.sh)/helm"; \
	cmp -s crds/oauthapps.oauthapp.io.yaml $(CHART)/crds/oauthapps.oauthapp.io.yaml \
	  || { echo "$(CHART)/crds/ differs from crds/: run make crds" >&2; exit 1; }; \
	for values in "" $(CHART)/ci/*-values.yaml; do \
	  args=$${values:+--values $$values}; \
	  echo "chart-lint: $${values:-default values}"; \
	  out=$$("$$helm" lint --strict $(CHART) $$args 2>&1) || { echo "$$out" >&2; exit 1; }; \
	  out=$$("$$helm" template oauthapp-operator $(CHART) --namespace oauthapp-system $$args 2>&1) \
	    || { echo "$$out" >&2; exit 1; }; \
	done

test: lint chart-lint controlplane-bin toxiproxy-bin ## every test: lint, chart lint, unit and integration tests, API fuzzing
	$(CARGO) test --all-targets -- --test-threads=$${TEST_THREADS:-4}
	tests/schemathesis.sh

schemathesis: controlplane-bin ## fuzz the REST API against its OpenAPI document (schemathesis, own control plane)
	tests/schemathesis.sh

openapi: ## regenerate docs/openapi.json (the REST API's OpenAPI document) from the code
	$(CARGO) run --quiet -- openapi > docs/openapi.json

crds: ## regenerate the CRD files from the code
	$(CARGO) run --quiet -- crd > crds/oauthapps.oauthapp.io.yaml
	cp crds/oauthapps.oauthapp.io.yaml charts/oauthapp-operator/crds/oauthapps.oauthapp.io.yaml

bench: controlplane-bin ## benchmarks on a local control plane, release build (~12 min): bench/results/latest.{md,json}; BENCH_QUICK=1 for a smoke run
	$(CARGO) build --release
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --release --manifest-path bench/Cargo.toml
	target/release/oauthapp-bench
