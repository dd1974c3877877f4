# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both (re)create .venv through `make install` when pyproject.toml changed.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Torch first: on this CPU machine that takes the CPU wheel; on a GPU cluster the CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo
PYTEST_ARGS ?=
# Tiers to leave out on purpose (markers, comma-separated: slurm,orthanc,...); any other skip fails the run.
OPT_OUT ?=

.PHONY: install system-deps demo test test-unit test-integration lint clean-demo help

help:
	@echo "make demo   - synth -> ingest -> train -> register -> infer on a synthetic export (CPU, minutes)"
	@echo "make test   - the whole test suite (unit, integration with real Slurm + MLflow, e2e); never skips"
	@echo "              a tier silently: OPT_OUT=slurm,orthanc leaves tiers out on purpose"
	@echo "make test-unit - unit tests only (an opt-out: says what it left out)"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# System packages (Slurm, munge, Orthanc, PostgreSQL, Chromium, DICOM oracles):
# installed when missing and we are root, else one line with the command to run.
system-deps:
	@bash scripts/system-deps.sh

demo: install
	IMAGING_ROOT=$(CURDIR) $(BIN)/python -m imaging.demo demo_dir=$(DEMO_DIR)

# Nothing skips silently (tests/conftest.py): a missing service fails its tier, and
# a skip that was not opted out (OPT_OUT=slurm, --opt-out=slurm) makes the run exit 1.
test: install system-deps
	IMAGING_OPT_OUT=$(OPT_OUT) $(BIN)/python -m pytest tests $(PYTEST_ARGS)

# A deliberate opt-out: the unit tests only, no system packages needed.
test-unit: install
	IMAGING_OPT_OUT=$(OPT_OUT) $(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)
	@echo "test-unit: left out on purpose: tests/integration and tests/e2e (real Slurm, MLflow server," \
	  "Orthanc, PostgreSQL, Chromium, Flower, DDP); \`make test\` runs them"

test-integration: install system-deps
	IMAGING_OPT_OUT=$(OPT_OUT) $(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check imaging tests benchmarks
	$(BIN)/mypy imaging

clean-demo:
	rm -rf $(DEMO_DIR)
