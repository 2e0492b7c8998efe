# People and CI run the same commands: `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Nothing we run phones home: DVC analytics and other telemetry off.
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# DVC's stages call `edge`: the virtualenv's commands come first, activated or not.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

UV_VERSION := 0.13.9
# Use uv from the PATH when there is one, else bootstrap the pinned version into .tools/.
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
BIN := .venv/bin

.PHONY: help setup up repro test test-containers lint bench clean emulate

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: uv.lock pyproject.toml services/webapp/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --compile-bytecode
	@touch $@

setup: .venv/.synced ## Create .venv and install the locked dependencies

up: setup ## The main job: seed the data, run the pipeline, serve the model and the webapp
	$(BIN)/edge up

repro: setup ## Seed the data if missing and run the DVC pipeline (cached stages are skipped)
	$(BIN)/edge data seed
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup ## Run the tests: unit, integration and browser (not the containers)
	$(BIN)/pytest -m "not containers"

test-containers: setup ## Build the images and run them in a real Docker engine (pytest -m containers)
	$(BIN)/pytest -m containers

lint: setup ## Check style and types: ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

emulate: setup ## Rehearse the cloud path locally: GCS emulator, registry, Google API stand-ins
	$(BIN)/python -m tests.standin

bench: setup ## Measure accuracy, pipeline time and serving speed on the real data
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_serving.py

clean: ## Remove the virtualenv, caches and local outputs (DVC's cache and runs stay)
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache test-artifacts bench-results
