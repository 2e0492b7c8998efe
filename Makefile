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

.PHONY: help setup up repro test test-e2e test-containers lint lock-check bench clean emulate

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

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

# The tests run in TEST_WORKERS processes (pytest-xdist). Run one at a time, they use 0.7 of a core on
# average (much of it waiting on the servers and commands they start); two share two cores. A file's
# tests stay in one process (--dist loadfile), so its module fixtures (a trained model, a reproduced
# project) are made once.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: setup ## Run the tests: unit, integration, model, browser (not e2e, not containers)
	$(BIN)/pytest -m "not e2e and not containers" $(PARALLEL) --durations=15

test-e2e: setup ## Run the end-to-end flows (pytest -m e2e): DVC in fresh repositories, the README's cloud path
	$(BIN)/pytest -m "e2e and not containers" $(PARALLEL) --durations=10

test-containers: setup ## Build the images and run them in a real Docker engine (pytest -m containers)
	$(BIN)/pytest -m containers --durations=10

lock-check: setup ## Check that dvc.lock matches each stage's code and params.yaml (else: dvc repro, commit)
	.ci/check-dvc-lock

lint: setup ## Check style and types: ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

emulate: setup ## Rehearse the cloud path locally: GCS emulator, registry, Google API stand-ins
	$(BIN)/python -m tests.standin

bench: setup ## Measure accuracy, pipeline and training-step time, serving speed and the prediction log's cost
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_steps.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_monitoring.py

clean: ## Remove the virtualenv, caches and local outputs (DVC's cache and runs stay)
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache test-artifacts bench-results

# --- The cloud path (CircleCI runs these on main; see README "CI/CD") -------------------------------
# Images are tagged with the commit and used by digest from then on: `make images` writes them here.
IMAGES_FILE := build/images.txt
IMAGE_TAG ?=
REGISTRY ?= $(shell $(BIN)/python -c 'from edge.cloud import settings; print(settings.load().image_registry)' 2>/dev/null)
SERVING_IMAGE ?= $(shell grep -m1 '/edge-trainer@sha256:' $(IMAGES_FILE) 2>/dev/null)

.PHONY: google-credentials images cloud-repro gate register deploy metrics-diff

google-credentials: ## CI: keyless Google credentials from CircleCI's OIDC token ($GCP_WIF_PROVIDER)
	.ci/google-credentials > $(HOME)/gcp-credentials.json

images: setup ## Build the trainer and webapp images and push them by digest (to build/images.txt)
	@mkdir -p $(dir $(IMAGES_FILE))
	$(BIN)/edge image build $(if $(IMAGE_TAG),--tag $(IMAGE_TAG))
	$(BIN)/edge image push --registry $(REGISTRY) $(if $(IMAGE_TAG),--tag $(IMAGE_TAG)) | tee $(IMAGES_FILE)

cloud-repro: setup ## The DVC pipeline with training on Vertex AI (edge.yaml: train_on: vertex)
	$(BIN)/edge data seed
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show
	if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc push; fi

gate: setup ## Release gate: the trained model against production, on the same test split
	$(BIN)/edge model gate --production registry

register: setup ## Register the trained model in Vertex AI, served by the pushed trainer image
	$(BIN)/edge model register --image "$(SERVING_IMAGE)"

deploy: setup ## Release the registered candidate: canary, smoke test, then promote or roll back
	$(BIN)/edge deploy

metrics-diff: setup ## This checkout's metrics against main's (Markdown in build/metrics-diff.md)
	@mkdir -p build
	git fetch --quiet origin main
	$(BIN)/dvc metrics diff --md origin/main | tee build/metrics-diff.md
