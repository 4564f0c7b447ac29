# The two commands: `make train` (set up + train the default task) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: setup train test test-all lint bench-quality bench-speed bench-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)                      ## create .venv and install lstmkit with its dev tools

train: $(STAMP)                      ## train the default task (sentiment) on its embedded data
	$(BIN)/lstmkit train

test: $(STAMP)                       ## the test suite (what CI runs)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 900 -m "not slow"

test-all: $(STAMP)                   ## including slow real-data runs
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --timeout 3600

bench-quality: $(STAMP)              ## every task on its real data (../shared/data); ARGS="--quick" or "ecg --seeds 1 2 3"
	$(BIN)/python scripts/bench_quality.py $(ARGS)

bench-speed: $(STAMP)                ## lstmkit vs a plain PyTorch loop (and Keras, with .[bench]); --quick via ARGS
	$(BIN)/python scripts/bench_speed.py $(ARGS)

bench-gpu: $(STAMP)                  ## the same on one CUDA GPU, float32 and bf16-mixed (ARGS="--device cpu --quick" dry run)
	$(BIN)/python scripts/bench_gpu.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts

clean:
	rm -rf logs outputs multirun dist build .pytest_cache bench/runs
