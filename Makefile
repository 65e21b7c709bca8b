# phoenix.deploy — the two commands: `make demo` and `make test`.
# Both run `make setup` first (idempotent; a no-op on a ready machine).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: setup demo demo-kubernetes test sanity unit integration bench build destroy destroy-kubernetes clean help

help:
	@echo "make demo   - set up, provision the local stack, run the main job, print where things are"
	@echo "make test   - set up, then sanity, galaxy-importer, ansible-lint, antsibull-docs, unit + integration tests"
	@echo "make bench  - benchmarks (table on stdout, results in bench/results/)"
	@echo "make setup  - install what is missing (Debian packages, .venv, Galaxy tools, Pulumi CLI, Kubernetes)"
	@echo "make destroy - tear the local demo down"
	@echo "make demo-kubernetes - the same story on the k8s-local cluster (root; builds Kubernetes once per user)"
	@echo "make destroy-kubernetes - tear the Kubernetes demo down"

setup:
	@scripts/setup.sh

# the demo needs no Kubernetes: its binaries are built by `make setup`/`make test` only
demo:
	@scripts/setup.sh --no-kubernetes
	@$(ENV) scripts/demo.sh

destroy:
	@scripts/setup.sh --no-kubernetes
	@$(ENV) scripts/demo.sh --destroy

# the Kubernetes demo needs the cluster's binaries: full setup (built once per user, cached)
demo-kubernetes: setup
	@$(ENV) PLATFORM=kubernetes scripts/demo.sh

destroy-kubernetes: setup
	@$(ENV) PLATFORM=kubernetes scripts/demo.sh --destroy

test: setup
	@$(ENV) scripts/test.sh $(PYTEST_ARGS)

sanity: setup
	@$(ENV) scripts/test.sh --only sanity

unit: setup
	@$(ENV) python -m pytest tests/unit -q $(PYTEST_ARGS)

integration: setup
	@$(ENV) python -m pytest tests/pytest -q $(PYTEST_ARGS)

bench: setup
	@$(ENV) python bench/run.py

build: setup
	@$(ENV) ansible-galaxy collection build --force --output-path .tools/dist .

clean:
	rm -rf .tools/dist tests/output .pytest_cache
