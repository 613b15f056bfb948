# bgblur: GPU video background blur on NVIDIA Triton. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
export BGBLUR_CACHE ?= $(CURDIR)/.cache/bgblur

.DEFAULT_GOAL := help
.PHONY: help setup demo serve test test-gpu bench perf lint format clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned dependencies and fetch/convert model weights

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m bgblur.models.selfie fetch --cache-dir $(BGBLUR_CACHE)
	touch $@

demo: setup  ## start the embedded server, blur a sample video -> out/demo.mp4 + out/demo_preview.png
	$(PY) -m bgblur.demo --out-dir out

serve: setup  ## run the embedded Triton server in the foreground (Ctrl-C stops it)
	$(PY) -m bgblur.server.launcher

test: setup  ## run the test suite (CPU; GPU tests skip themselves without CUDA)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-gpu: setup  ## run the GPU-marked tests (needs an NVIDIA GPU, CuPy and CUDA torch)
	$(PY) -m pytest -q -m gpu

bench: setup  ## end-to-end figures (embedded server, transports) -> bench/results/e2e-local.json
	$(PY) bench/e2e.py --sizes 720p,1080p --batches 1,4 --concurrency 1,4 --shared-memory none,system --out bench/results/e2e-local.json

perf: setup  ## perf_analyzer sweep with real frames -> out/perf/*.csv (needs glibc >= 2.38)
	$(PY) bench/perf.py --out-dir out/perf

lint:  ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:  ## ruff format + autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf out .pytest_cache .ruff_cache
