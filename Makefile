# gridrun: set-up, the study, tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
GRIDRUN := $(BIN)/gridrun
RESULTS ?= results
STAMP := $(VENV)/.installed

.PHONY: setup run-all test test-slow test-all test-fast chaos lint format bench gpu-check report tensorboard images clean

setup: $(STAMP)

# Idempotent: the venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[torch,tensorflow,host,dev]"
	touch $(STAMP)

run-all: setup
	$(GRIDRUN) run jobs/alexnet-challenge.yaml --results $(RESULTS)

# Every test but the minute-long scenarios (marked slow): real Ray clusters, Docker, an S3 API, TensorBoard,
# Chromium; two at a time (xdist). About 9 minutes on two cores.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist worksteal --durations=30
test: setup
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The minute-long scenarios alone: searches with Ctrl-C, framework parity, zoo models in containers, multi-node
# clusters, kill-and-resume on object storage, a cancelled submission, the benches.
test-slow: setup
	$(PYTEST) -m slow $(PYTEST_ARGS)

# Everything, as CI runs it: `make test`, then `make test-slow`.
test-all: test test-slow

# The quick loop while editing (about 2 minutes): no training, no Ray, no containers, no multi-node clusters.
test-fast: setup
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) -m "not slow and not docker and not cluster and not runs" $(PYTEST_ARGS)

# Kill workers, containers and the driver at random while a suite runs; then check that every job succeeded
# exactly once, whole, with nothing left running, and print the figures. KILLS, JOBS, EPOCHS, SEED tune it.
KILLS ?= 12
JOBS ?= 4
EPOCHS ?= 10
SEED ?= 1
chaos: setup
	$(BIN)/python tests/chaos.py --kills $(KILLS) --jobs $(JOBS) --epochs $(EPOCHS) --seed $(SEED) --baseline

# The report of one suite (written by `run` too); SUITE names it.
SUITE ?= alexnet-challenge
report: setup
	$(GRIDRUN) report $(RESULTS)/$(SUITE)

# TensorBoard over every run of every suite, each named <suite>/<job>; PORT=0 picks a free port.
PORT ?= 6006
tensorboard: setup
	$(GRIDRUN) tensorboard $(RESULTS) --port $(PORT)

# Each bench/bench_*.py prints its figures; bench/gpu_check.py (the CUDA path, minutes on a GPU) runs only where
# nvidia-smi lists a GPU, writing $(RESULTS)/gpu_check.json: elsewhere `make gpu-check` runs it at tiny sizes.
bench: setup
	set -e; for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script; done
	@if nvidia-smi -L >/dev/null 2>&1; then echo "== bench/gpu_check.py"; $(MAKE) --no-print-directory gpu-check; \
	else echo "== bench/gpu_check.py skipped: no GPU here (make gpu-check runs it at tiny sizes on the CPU)"; fi

# The study's CUDA path against a bare bf16 loop (tiny sizes without a GPU); the figures in one JSON.
gpu-check: setup
	mkdir -p $(RESULTS)
	$(BIN)/python bench/gpu_check.py --out $(RESULTS)/gpu_check.json

# Both framework images (BASE_IMAGE defaults to the Dockerfiles', or the offline base when only it is here).
images: setup
	$(GRIDRUN) images build

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(RESULTS) .pytest_cache
