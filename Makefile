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
.PHONY: help install test test-fast lint crds demo clean chart-sync chart-lint images images-smoke e2e bench \
	gpu-wheelhouse gpu-check gpu-check-cpu

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

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

e2e: install ## operator end-to-end tests (real kopf operator vs an emulated API server; -m cluster for a real one)
	$(BIN)/pytest -q tests/operator/e2e

reliability: install ## fuzz, chaos, overload and security suite at full counts (< 30 min); prints the figures table
	AUTOGLM_RELIABILITY=1 $(BIN)/pytest -q tests/reliability --timeout 1800

crds: install ## regenerate crds/ from the pydantic API models
	$(BIN)/autoglm-operator crd -o crds/autoglm.io_autoglmdeployments.yaml
	$(MAKE) --no-print-directory chart-sync

chart-sync: ## copy the CRD, Grafana dashboard and alert rules into the Helm chart (tests check the copies)
	cp crds/autoglm.io_autoglmdeployments.yaml charts/autoglm-operator/crds/
	cp deploy/grafana/autoglm-dashboard.json deploy/prometheus/autoglm-rules.yaml charts/autoglm-operator/files/

chart-lint: install ## helm lint --strict, chart/manifest/RBAC/schema tests, hadolint, and a checkov scan of the rendered chart
	$(BIN)/helm lint --strict charts/autoglm-operator
	$(BIN)/pytest -q tests/delivery
	bash scripts/checkov.sh

images: install ## build the operator and runtime (CPU) images: docker if it runs, else buildah offline
	bash scripts/build-images.sh

images-smoke: install ## build the images, then run them (operator CRD, runtime /readyz + a completion)
	bash scripts/install-image-tools.sh
	$(BIN)/pytest -q -m images tests/delivery/test_images.py

demo: install ## validate + render the examples, then run the runtime on a packaged small model
	$(PY) scripts/demo.py

bench: install ## runtime vs batch-1 vs transformers serve, quantization, overhead, operator (< 20 min); writes bench-results/ and docs/benchmarks.md
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= build/gpu-check
gpu-wheelhouse: ## with network: build/gpu-wheelhouse/ (<= 50 MB) + extra/ (transformers, accelerate) for gpu-check offline
	bash scripts/gpu-wheelhouse.sh build/gpu-wheelhouse

gpu-check: ## on a GPU node, offline: install from build/gpu-wheelhouse beside GPU_PYTHON's torch, run the acceptance check (< 10 min)
	PYTHON=$(GPU_PYTHON) bash scripts/gpu-check.sh $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# What the wheelhouse is made of: gpu-check-cpu rebuilds it only when one of these changed.
GPU_WHEELHOUSE_INPUTS := pyproject.toml README.md scripts/gpu-wheelhouse.sh scripts/gpu-wheelhouse.txt \
	scripts/gpu-wheelhouse-extra.txt $(shell find operator/src runtime/src -type f -not -path '*__pycache__*' 2>/dev/null)
build/gpu-wheelhouse/SHA256SUMS: $(GPU_WHEELHOUSE_INPUTS)
	bash scripts/gpu-wheelhouse.sh build/gpu-wheelhouse

gpu-check-cpu: build/gpu-wheelhouse/SHA256SUMS ## the CPU form CI runs: a fresh venv with only torch, gpu-check from the wheelhouse (rebuilt if its inputs changed) at tiny scale
	bash scripts/gpu-check-cpu.sh build/gpu-check-cpu $(GPU_CHECK_ARGS)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
