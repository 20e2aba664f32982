# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when it is
# missing and reinstall only when setup.cfg or pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip takes these from the files on disk here; elsewhere it downloads them. Override for another
# build, e.g. TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128".
TORCH ?= torch==2.14.1 torchvision==0.29.1
SHARED_DATA := ../shared/data/cifar10-jpeg.tar.gz
ARGS ?=
PORT ?= 5000
# make dashboard listens on 8080 unless PORT is given (on the command line or in the environment),
# so it can run beside make ui.
DASHBOARD_PORT = $(if $(filter file,$(origin PORT)),8080,$(PORT))
STORAGE ?=
# Where make services keeps PostgreSQL's data; as root, the postgres user must reach it.
SERVICES_DIR ?= mlruns/services

.PHONY: run test lint data ui dashboard benchmark export results services services-stop clean help

help:
	@echo "make run [ARGS='study=tricks budget=cpu ...']   run a study (default: the tricks grid)"
	@echo "make test                                      lint and run the test suite"
	@echo "make ui [PORT=5000]                            MLflow UI on 127.0.0.1 over mlruns/"
	@echo "make dashboard [STORAGE=... PORT=8080]         optuna-dashboard on 127.0.0.1 over a study's trials"
	@echo "                                               (default: the tricks journal; ARGS='study=NAME')"
	@echo "make export [ARGS='study=tricks']              write the ablation CSVs"
	@echo "make results [ARGS='study=tricks']             list the studies; a study's verdict again"
	@echo "make benchmark [ARGS=--quick]                  training throughput, side by side"
	@echo "make services [SERVICES_DIR=mlruns/services]   local PostgreSQL + MLflow server for many workers"
	@echo "make services-stop                             stop them"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,ui,slurm,postgres,dashboard]"
	@touch $(STAMP)

# Unpack the offline CIFAR-10 copy into ./data (the default data.root) when it sits beside us.
data/.unpacked:
	@if [ -f $(SHARED_DATA) ]; then \
		(cd $(dir $(SHARED_DATA)) && sha256sum -c --quiet $(notdir $(SHARED_DATA)).sha256) && \
		mkdir -p data && tar xzf $(SHARED_DATA) -C data && touch $@ && \
		echo "unpacked CIFAR-10 (JPEG copy) into data/"; \
	else echo "no $(SHARED_DATA): the run will try to download CIFAR-10 into data/"; fi

data: data/.unpacked

run: $(STAMP) data
	@if [ -d data/train ] || [ -d data/cifar-10-batches-py ]; then \
		$(PY) -m harness.run $(ARGS); \
	else $(PY) -m harness.run data.download=true $(ARGS); fi

export: $(STAMP)
	$(PY) -m harness.export $(ARGS)

results: $(STAMP)
	$(PY) -m harness.results $(ARGS)

test: $(STAMP) lint data
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

ui: $(STAMP)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning"
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///mlruns/mlflow.db \
		--host 127.0.0.1 --port $(PORT) --workers 1

# optuna-dashboard for search studies and for watching a queue drain: the study's storage as
# harness.run resolves it (STORAGE= or ARGS='storage=...', else ARGS='study=NAME' picks that
# study's default journal), bound to 127.0.0.1.
dashboard: $(STAMP)
	$(PY) -m harness.dashboard $(if $(findstring port=,$(ARGS)),,port=$(DASHBOARD_PORT)) \
		$(if $(STORAGE),'storage=$(STORAGE)') $(ARGS)

benchmark: $(STAMP) data
	$(PY) benchmarks/throughput.py $(ARGS)

# PostgreSQL (data in $(SERVICES_DIR)) and an MLflow server on it, both on 127.0.0.1. The last
# line printed is the storage= and tracking_uri= overrides for every worker.
services: $(STAMP)
	@$(PY) -m harness.study.services start --folder '$(SERVICES_DIR)'

services-stop: $(STAMP)
	@$(PY) -m harness.study.services stop --folder '$(SERVICES_DIR)'

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
