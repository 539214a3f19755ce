# Every target creates and reuses the virtualenv in .venv; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test unit soak bench chaos lint clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install ks2os with its test and dev tools and PySpark

demo: $(STAMP) ## start the local stack, run backfill and follow on a sample table, show the result
	$(BIN)/python scripts/demo.py

test: $(STAMP) ## run the whole test suite (bounded soak tests included)
	$(BIN)/python -m pytest

unit: $(STAMP) ## only the pure unit tests (no servers), in seconds
	$(BIN)/python -m pytest -m unit

soak: $(STAMP) ## the long soak tests at full length
	KS2OS_TEST_SOAK=full $(BIN)/python -m pytest -m slow

bench: $(STAMP) ## measure throughput and latency against their ceilings, printed as ratios
	$(BIN)/python scripts/bench.py

chaos: $(STAMP) ## kill, throttle, reset, reshard at once, then prove each index equals its table (ARGS="--minutes 20 --seed N")
	$(BIN)/python -m scripts.chaos $(ARGS)

lint: $(STAMP) ## ruff and strict mypy
	$(BIN)/ruff check sync keyspaces_local tests scripts
	$(BIN)/ruff format --check sync keyspaces_local tests scripts
	$(BIN)/mypy

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
