# kdl: `make run` trains, exports and verifies the default recipe; `make test` runs the suite
# once per Keras backend. Every target creates/updates the virtualenv first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
EXP ?= digits_cnn
BACKEND ?= tensorflow
PORT ?= 5000
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run train export test test-slow lint ui bench verify-bundle clean \
	postgres tracking-server

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=<recipe> BACKEND=<tensorflow|jax|torch> RUN=<run dir> PORT=<ui port>"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,jax,torch,dev]"
	@# tfmot 0.8.1 pins absl-py~=1.2 (TensorFlow 2.21 has 2.x); it runs fine on 2.x, so no deps
	$(PY) -m pip install -q --no-deps tensorflow-model-optimization==0.8.1 dm-tree==0.1.10
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install kdl with every backend

run: venv ## train, export and verify the default recipe (EXP=, BACKEND=)
	KERAS_BACKEND=$(BACKEND) $(PY) -m pipelines run $(EXP)

train: venv ## train only: make train EXP=<recipe> BACKEND=<backend>
	KERAS_BACKEND=$(BACKEND) $(PY) -m pipelines run $(EXP) --stages train

export: venv ## export and verify an earlier run: make export RUN=saved_models/<exp>/<run>
	@test -n "$(RUN)" || { echo "usage: make export RUN=saved_models/<experiment>/<run>"; exit 2; }
	KERAS_BACKEND=tensorflow $(PY) -m pipelines export $(RUN)

# The fast suite is compile-bound on JAX (tiny models, many shapes): XLA's cheapest CPU
# pipeline halves its CPU time. TensorFlow uses no XLA on CPU; the slow suite keeps the defaults.
FAST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true

# The passes run side by side, TEST_JOBS parts at a time (tests/run_passes.py says how).
TEST_JOBS ?= $(shell nproc)

test: venv postgres ## the test suite, once per backend, each in processes of its own
	$(PY) tests/run_passes.py --jobs $(TEST_JOBS) --backends "$(BACKENDS)" \
	  --fast-xla="$(FAST_XLA_FLAGS)" -- $(PYTEST_ARGS)

test-slow: venv ## the slow tests (learning bars, long training), once per backend
	@failed=""; for b in $(BACKENDS); do \
	  KERAS_BACKEND=$$b $(PY) -m pytest -m slow -q $(PYTEST_ARGS) || failed="$$failed $$b"; \
	done; [ -z "$$failed" ] || { echo "FAILED on:$$failed"; exit 1; }

lint: venv ## ruff
	$(PY) -m ruff check kdl pipelines tests benchmarks

# MLflow's job runner (8 processes for its GenAI jobs, unused by kdl) stays off unless the
# environment turns it on: docs/scale.md.
ui: venv ## the MLflow UI over the project's store, on http://127.0.0.1:$(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(PORT)

# The team tracking server: PostgreSQL from the OS packages (installed here when missing;
# needs root, as CI runs), its data in $(SERVER_DIR); Ctrl-C stops PostgreSQL and MLflow.
SERVER_DIR ?= $(CURDIR)/.tracking-server

postgres: ## install PostgreSQL's server binaries from the OS packages if missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

tracking-server: venv postgres ## MLflow server, PostgreSQL store, proxied artifacts, 127.0.0.1:$(PORT)
	$(PY) -m pipelines tracking-server --dir $(SERVER_DIR) --port $(PORT)

bench: venv ## benchmark a run's exports: make bench RUN=<run dir>; no RUN: train-stage overhead
	@if [ -n "$(RUN)" ]; then KERAS_BACKEND=$(BACKEND) $(PY) -m pipelines bench $(RUN); \
	else for b in $(BACKENDS); do KERAS_BACKEND=$$b $(PY) -m benchmarks.train_overhead; done; fi

verify-bundle: venv ## replay a bundle's golden vectors as an app would: make verify-bundle RUN=<run dir>
	@test -n "$(RUN)" || { echo "usage: make verify-bundle RUN=saved_models/<experiment>/<run>"; exit 2; }
	$(PY) -m pipelines verify-bundle $(RUN)/bundle

clean: ## remove caches (never saved models or the MLflow store)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build *.egg-info
