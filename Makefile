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
.PHONY: help venv run train export test test-slow lint ui bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=<recipe> BACKEND=<tensorflow|jax|torch> RUN=<run dir> PORT=<ui port>"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[jax,torch,dev]"
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install kdl with every backend

run: venv ## train, export and verify the default recipe (EXP=, BACKEND=)
	KERAS_BACKEND=$(BACKEND) $(PY) -m pipelines run $(EXP)

train: venv ## train only: make train EXP=<recipe> BACKEND=<backend>
	KERAS_BACKEND=$(BACKEND) $(PY) -m pipelines run $(EXP) --stages train

export: venv ## export and verify an earlier run: make export RUN=saved_models/<exp>/<run>
	@test -n "$(RUN)" || { echo "usage: make export RUN=saved_models/<experiment>/<run>"; exit 2; }
	KERAS_BACKEND=tensorflow $(PY) -m pipelines export $(RUN)

test: venv ## the test suite, once per backend, each in its own process
	@failed=""; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PY) -m pytest -m "not slow" -q -p no:cacheprovider $(PYTEST_ARGS) || failed="$$failed $$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED on:$$failed"; exit 1; fi

test-slow: venv ## the slow tests (learning bars, long training), once per backend
	@failed=""; for b in $(BACKENDS); do \
	  KERAS_BACKEND=$$b $(PY) -m pytest -m slow -q $(PYTEST_ARGS) || failed="$$failed $$b"; \
	done; [ -z "$$failed" ] || { echo "FAILED on:$$failed"; exit 1; }

lint: venv ## ruff
	$(PY) -m ruff check kdl pipelines tests benchmarks

ui: venv ## the MLflow UI over the project's store, on http://127.0.0.1:$(PORT)
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(PORT)

bench: venv ## train-stage overhead vs bare model.fit, per backend
	@for b in $(BACKENDS); do KERAS_BACKEND=$$b $(PY) -m benchmarks.train_overhead; done

clean: ## remove caches (never saved models or the MLflow store)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build *.egg-info
