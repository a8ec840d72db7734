# AutoGLM operator — developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint crds demo clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP) ## create .venv with everything for dev, tests and the demo (idempotent)

test: install ## run the test suite (what CI runs)
	$(BIN)/pytest -q

test-fast: install ## unit tests only (skip slow end-to-end tests)
	$(BIN)/pytest -q -m "not slow"

lint: install ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

crds: install ## regenerate crds/ from the pydantic API models
	$(BIN)/autoglm-operator crd -o crds/autoglm.io_autoglmdeployments.yaml

demo: install ## validate + render the examples, then run the runtime on a packaged small model
	$(PY) scripts/demo.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
