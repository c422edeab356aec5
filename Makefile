# One-command setup, demo and tests. Everything installs into .venv/ in the repository root,
# pinned by constraints.txt (torch==2.13.0 CPU; an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
EXTRAS := train,quantize,dev,rtx,deploy

.PHONY: setup demo test clean

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
	$(PY) -m runtime pipeline --config configs/demo.yaml

test: setup
	$(PY) scripts/run_tests.py

clean:
	rm -rf $(VENV) runs .pytest_cache
