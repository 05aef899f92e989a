# scanml — run `make help` for the list of targets.
# Every target installs what it needs first, so `make demo` and `make test`
# work on a fresh machine that has only Python 3.11.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SCANML := $(VENV)/bin/scanml
STAMP := $(VENV)/.installed

export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

DATA_DIR ?= data/raw/synth
N_SCANS ?= 300
SEED ?= 0
CONFIG ?= configs/default.yaml
MODEL ?= models:/scanml-anomaly@champion
UI_PORT ?= 5000

.PHONY: help install data demo train score evaluate test test-fast lint format ui server bench bench-quality clean

## Show this help
help:
	@awk 'BEGIN {FS = ":.*"} /^## / {doc = substr($$0, 4); next} /^[a-zA-Z_-]+:/ && doc {printf "  \033[36m%-12s\033[0m %s\n", $$1, doc; doc = ""} {if ($$0 !~ /^## /) doc = ""}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Create .venv and install scanml (editable) with its dev extras
install: $(STAMP)

## Generate the simulated dataset (N_SCANS scans, seed SEED) into DATA_DIR
data: $(STAMP)
	$(SCANML) synth --out $(DATA_DIR) --n-scans $(N_SCANS) --seed $(SEED) --sites antwerp,rotterdam --skip-existing

## Run the main job end to end on a fresh machine: data, training, evaluation, scoring
demo: $(STAMP)
	$(SCANML) demo --workdir .

## Train the CONFIG preset on DATA_DIR, tracked in MLflow
train: data
	$(SCANML) train --config $(CONFIG) --data $(DATA_DIR)

## Evaluate MODEL on DATA_DIR's test split and log the report to MLflow
evaluate: $(STAMP)
	$(SCANML) evaluate --model $(MODEL) --data $(DATA_DIR)

## Score the scans in INPUT with MODEL into data/processed/scores.parquet
score: $(STAMP)
	$(SCANML) score --model $(MODEL) --input $(INPUT) --out data/processed/scores.parquet --overlays data/processed/overlays --tdr data/processed/tdr

## Run the whole test suite (installs first)
test: $(STAMP)
	$(PY) -m pytest

## Run the tests not marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

## Lint with ruff
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

## Format with ruff
format: $(STAMP)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

## Serve the MLflow UI on http://127.0.0.1:$(UI_PORT)
ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port $(UI_PORT)

SERVER_DB ?= postgresql://mlflow@127.0.0.1:5432/mlflow
SERVER_PORT ?= 5000

## Shared tracking server on http://127.0.0.1:$(SERVER_PORT): MLflow on PostgreSQL (SERVER_DB) with logins; needs MLFLOW_AUTH_ADMIN_PASSWORD
server: $(STAMP)
	$(SCANML) server --backend-store-uri $(SERVER_DB) --port $(SERVER_PORT) --artifacts mlartifacts

## Run the benchmarks; results go to reports/ and MLflow
bench: $(STAMP)
	$(SCANML) bench --out reports

QUALITY_DIR ?= data/bench-quality

## Train the default preset within its budget; detection quality with intervals -> reports/quality.md
bench-quality: $(STAMP)
	$(SCANML) synth --out $(QUALITY_DIR)/train --n-scans 400 --seed 0 --sites antwerp,rotterdam --skip-existing
	$(SCANML) synth --out $(QUALITY_DIR)/left-out-santos --n-scans 100 --seed 1 --sites santos --skip-existing
# a foreign set written before the clean twins (no twin column) is rewritten
	head -n 1 $(QUALITY_DIR)/foreign/manifest.csv 2>/dev/null | grep -q twin || \
		{ rm -rf $(QUALITY_DIR)/foreign && $(PY) benchmarks/foreign_scans.py --out $(QUALITY_DIR)/foreign --n-scans 200 --seed 0; }
	$(SCANML) bench --quality --out reports --data $(QUALITY_DIR)/train \
		--left-out $(QUALITY_DIR)/left-out-santos --foreign $(QUALITY_DIR)/foreign

## Remove generated data, runs and caches (keeps .venv)
clean:
	rm -rf data/raw data/processed mlruns mlflow.db .pytest_cache .ruff_cache outputs
