# oauthapp-operator — every command a developer or CI needs. See README.md and docs/development.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CP := tests/controlplane
CARGO ?= cargo

.PHONY: help build controlplane-bin toxiproxy-bin keycloak-bin previous-operator-bin controlplane controlplane-down run test lint chart-lint docs unit integration crds bench bench-scale openapi schemathesis image node node-down e2e soak

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

build: ## build the operator (debug)
	$(CARGO) build

.PHONY: install-plugin promtool
install-plugin: ## install the kubectl plugin (`kubectl oauthapp`) into ~/.cargo/bin
	$(CARGO) install --locked --path . --bin kubectl-oauthapp

controlplane-bin: ## build the pinned kube-apiserver, kube-controller-manager, kubectl, etcd and helm (cached)
	@$(CP)/build.sh >/dev/null

toxiproxy-bin: ## build the pinned Toxiproxy server for the fault tests (cached)
	@tests/toxiproxy/build.sh >/dev/null

keycloak-bin: ## fetch and unpack the pinned Keycloak server for the provider tests (Maven, sha256 checked, cached)
	@tests/keycloak/build.sh >/dev/null

previous-operator-bin: ## build the operator at the previous version (0.1.0) from this repository's history, for the upgrade test (cached)
	@tests/tools/previous-operator.sh >/dev/null

controlplane: ## start a local control plane in the background (reused if running); eval the lines it prints
	@$(CP)/up.sh

controlplane-down: ## stop the local control plane
	@$(CP)/down.sh

run: ## run the operator against the current cluster, or a local control plane when none is reachable
	@scripts/run.sh

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path bench/Cargo.toml -- --check
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings
	$(CARGO) clippy --lib --bins -- -D warnings

unit: ## unit tests (no cluster needed)
	$(CARGO) test --lib --bins

integration: controlplane-bin toxiproxy-bin keycloak-bin previous-operator-bin ## integration tests on a real control plane started for the run
	$(CARGO) test --features failpoints --test integration -- --test-threads=$${TEST_THREADS:-4}

CHART := charts/oauthapp-operator
chart-lint: controlplane-bin ## helm lint --strict and helm template of the chart, with default and each ci/*-values.yaml
	@set -euo pipefail; helm="$$($(CP)/build.sh)/helm"; \
	cmp -s crds/oauthapps.oauthapp.io.yaml $(CHART)/crds/oauthapps.oauthapp.io.yaml \
	  || { echo "$(CHART)/crds/ differs from crds/: run make crds" >&2; exit 1; }; \
	cmp -s docs/grafana-dashboard.json $(CHART)/dashboards/oauthapp-operator.json \
	  || { echo "docs/grafana-dashboard.json differs from $(CHART)/dashboards/oauthapp-operator.json: copy the chart's" >&2; exit 1; }; \
	for values in "" $(CHART)/ci/*-values.yaml; do \
	  args=$${values:+--values $$values}; \
	  echo "chart-lint: $${values:-default values}"; \
	  out=$$("$$helm" lint --strict $(CHART) $$args 2>&1) || { echo "$$out" >&2; exit 1; }; \
	  out=$$("$$helm" template oauthapp-operator $(CHART) --namespace oauthapp-system $$args 2>&1) \
	    || { echo "$$out" >&2; exit 1; }; \
	done

docs: ## build the manual (docs/) as a book with mdBook into target/book/ and check every link and anchor offline (lychee); both pinned, installed by cargo, cached
	@tests/tools/docs.sh

promtool: controlplane-bin ## promtool check rules and test rules (tests/promtool/) on the chart's PrometheusRule; promtool built from Go modules, cached
	@set -euo pipefail; helm="$$($(CP)/build.sh)/helm"; promtool="$$(tests/tools/promtool.sh)"; \
	dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	"$$helm" template oauthapp-operator $(CHART) --namespace oauthapp-system \
	  --values $(CHART)/ci/monitoring-values.yaml --show-only templates/prometheusrule.yaml \
	  | sed -n '/^spec:$$/,$$p' | tail -n +2 | sed 's/^  //' > "$$dir/rules.yaml"; \
	cp tests/promtool/*-test.yaml "$$dir/"; \
	"$$promtool" check rules "$$dir/rules.yaml"; \
	"$$promtool" test rules "$$dir"/*-test.yaml

test: lint chart-lint promtool docs controlplane-bin toxiproxy-bin keycloak-bin previous-operator-bin ## every test: lint, chart lint, alert rules, the manual's links, unit and integration tests, API fuzzing, e2e in pods
	$(CARGO) test --all-targets --features failpoints -- --test-threads=$${TEST_THREADS:-4}
	tests/schemathesis.sh
	tests/e2e.sh

schemathesis: controlplane-bin ## fuzz the REST API against its OpenAPI document (schemathesis, own control plane)
	tests/schemathesis.sh

openapi: ## regenerate docs/openapi.json (the REST API's OpenAPI document) from the code
	$(CARGO) run --quiet -- openapi > docs/openapi.json

crds: ## regenerate the CRD files from the code
	$(CARGO) run --quiet -- crd > crds/oauthapps.oauthapp.io.yaml
	cp crds/oauthapps.oauthapp.io.yaml charts/oauthapp-operator/crds/oauthapps.oauthapp.io.yaml
	$(CARGO) run --quiet -- crd oauthproviders > crds/oauthproviders.oauthapp.io.yaml
	cp crds/oauthproviders.oauthapp.io.yaml charts/oauthapp-operator/crds/oauthproviders.oauthapp.io.yaml

bench: controlplane-bin ## benchmarks on a local control plane, release build, the peer too (~25 min): bench/results/latest.{md,json}; BENCH_QUICK=1 for a smoke run
	$(CARGO) build --release
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --release --manifest-path bench/Cargo.toml
	target/release/oauthapp-bench

bench-scale: controlplane-bin ## the scale phase alone, at BENCH_APPS (default 100000; about 35 min on 2 cores) with the chart's hash workers, release build: bench/results/scale-<apps>.md
	$(CARGO) build --release
	CARGO_TARGET_DIR=$(CURDIR)/target $(CARGO) build --release --manifest-path bench/Cargo.toml
	BENCH_SCALE_ONLY=1 BENCH_APPS=$${BENCH_APPS:-100000} BENCH_IDLE_SECS=$${BENCH_IDLE_SECS:-120} \
	  BENCH_HASH_WORKERS=$${BENCH_HASH_WORKERS:-$$(awk '/^hashing:/{h=1} h && /^  workers:/{print $$2; exit}' charts/oauthapp-operator/values.yaml)} \
	  target/release/oauthapp-bench

soak: controlplane-bin toxiproxy-bin ## the soak, not in make test (~12 min): 50 apps, two replicas behind Toxiproxy, random faults and a leader kill for SOAK_SECONDS (600), seeded (SOAK_SEED); debug build; bench/results/soak.{md,json}
	$(CARGO) test --features failpoints --test integration -- --ignored --exact soak::soak_with_random_faults --nocapture

image: ## the operator image as an OCI archive, offline (release binary FROM scratch): target/image/
	@scripts/image.sh >/dev/null

node: ## a single-node cluster on this machine (root, containerd) with the image imported: eval the lines it prints
	@tests/node/up.sh --image "$$(scripts/image.sh)"

node-down: ## stop the node and undo every change it made to this machine
	@tests/node/down.sh

e2e: ## the chart and the image in pods on a node (make image, node up, checks, node down); skipped where no node can run
	@tests/e2e.sh
