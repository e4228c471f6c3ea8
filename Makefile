# numbers-etl developer tasks. `make help` lists them. Each creates .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help demo test lint format bench ci clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(BIN)/numbers-etl: pyproject.toml
	python3 -m venv $(VENV) && $(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: $(BIN)/numbers-etl ## run the demo against the simulator into numbers_stock.sqlite
	$(BIN)/numbers-etl demo

test: $(BIN)/numbers-etl ## run the whole test suite (PostgreSQL/MariaDB tests skip if absent)
	$(BIN)/pytest

lint: $(BIN)/numbers-etl ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy etl

format: $(BIN)/numbers-etl ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(BIN)/numbers-etl ## run the sync benchmark and write bench/RESULTS.md
	$(BIN)/python bench/sync_bench.py

ci: ## what CI runs
	bash .ci/run

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
