# One-command setup, demo and tests. Everything installs into .venv/ in the repository root,
# pinned by constraints.txt (torch==2.13.0 CPU; an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
EXTRAS := train,quantize,dev,rtx,deploy,openvino

.PHONY: setup demo bench test clean

setup: $(STAMP)

# Re-runs only when the project metadata or the constraints change (idempotent, fast when done).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# The whole pipeline (train, export, quantize, TensorRT where present, parity, bench, report) into
# runs/demo/; a rerun reuses every up-to-date artifact (docs/pipeline.md).
demo: setup
	$(VENV)/bin/ferdeploy pipeline --config configs/demo.yaml

# Reproduces every speed figure README.md quotes: the demo's models (made by `make demo`, reused when
# current) timed against FP32 in alternating rounds, 1 and 2 threads, batch 1 and 32, three repeats:
# median and range per cell (scripts/bench_headline.py; runs/demo/headline/headline.md).
bench: demo
	$(PY) scripts/bench_headline.py --run runs/demo --repeats 3

# ruff (lint and format check, configured in pyproject.toml) first: a style slip fails fast.
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/run_tests.py

clean:
	rm -rf $(VENV) runs .pytest_cache
