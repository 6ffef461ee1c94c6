# oauthapp-operator — every command a developer or CI needs. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CP := tests/controlplane
CARGO ?= cargo

.PHONY: help build controlplane-bin controlplane controlplane-down run test lint unit integration crds bench clean-cache

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

build: ## build the operator (debug)
	$(CARGO) build

controlplane-bin: ## build the pinned kube-apiserver, kube-controller-manager, kubectl, etcd and helm (cached)
	@$(CP)/build.sh >/dev/null

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

integration: controlplane-bin ## integration tests on a real control plane started for the run
	$(CARGO) test --test integration -- --test-threads=$${TEST_THREADS:-4}

test: lint controlplane-bin ## every test: lint, unit and integration tests
	$(CARGO) test --all-targets -- --test-threads=$${TEST_THREADS:-4}

crds: ## regenerate the CRD files from the code
	$(CARGO) run --quiet -- crd > crds/oauthapps.oauthapp.io.yaml
	cp crds/oauthapps.oauthapp.io.yaml charts/oauthapp-operator/crds/oauthapps.oauthapp.io.yaml
