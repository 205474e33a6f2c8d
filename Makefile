# The two commands: `make run` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= ray_app/configs/local.yaml

.PHONY: install run test test-unit lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the main job on embedded defaults (sample data, local Ray, local data root)
run: $(STAMP)
	$(BIN)/ray-app ingest --config $(CONFIG)
	$(BIN)/ray-app features --config $(CONFIG)
	$(BIN)/ray-app data status --config $(CONFIG)

## test: the whole suite (unit, integration on a real local Ray cluster, infra)
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
