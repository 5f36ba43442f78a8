# recgoat developer commands. `make install` builds .venv; every other target uses it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test test-fast bench lint clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,features,sweeps]"

run:
	$(BIN)/python -m recgoat.run

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

bench:
	$(BIN)/python benchmarks/bench.py

lint:
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf logs .cache .pytest_cache build dist src/*.egg-info
