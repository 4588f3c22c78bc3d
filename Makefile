# Fulcrum: every install step lives here. Re-running a target reinstalls nothing
# unless pyproject.toml or requirements.lock changed (stamp files in .venv/).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: run install install-dev test lint compare serve stop airflow clean-data help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first so pip takes the local CPU wheel and never a CUDA build.
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -c requirements.lock -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv with the whole stack

install-dev: install $(VENV)/.installed-dev  ## add test/lint tools

run: install  ## install, run the daily cycle (dvc repro), start the decision service on 127.0.0.1
	$(BIN)/dvc repro
	$(BIN)/fulcrum report
	$(BIN)/fulcrum serve --background

compare: install  ## the multi-seed HUM vs baselines comparison (slow)
	$(BIN)/dvc repro experiments/compare/dvc.yaml

serve: install  ## start the released decision service on 127.0.0.1 (serve.port, default 3000)
	$(BIN)/fulcrum serve

stop:  ## stop the decision service that make run left running
	$(BIN)/fulcrum stop

airflow: install  ## start Airflow on 127.0.0.1:8080 with the fulcrum_daily DAG; prints the login
	scripts/airflow_up.sh

test: install-dev  ## install, then run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev  ## ruff
	$(BIN)/ruff check .

clean-data:  ## remove generated data and reports (keeps .venv)
	rm -rf data reports
