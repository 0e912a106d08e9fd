# gridrun: set-up, the study, tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
GRIDRUN := $(BIN)/gridrun
RESULTS ?= results
STAMP := $(VENV)/.installed

.PHONY: setup run-all test lint format bench report tensorboard images clean

setup: $(STAMP)

# Idempotent: the venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[torch,tensorflow,host,dev]"
	touch $(STAMP)

run-all: setup
	$(GRIDRUN) run jobs/alexnet-challenge.yaml --results $(RESULTS)

test: setup
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(RESULTS) .pytest_cache
