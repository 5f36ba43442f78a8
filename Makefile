# recgoat developer commands. `make install` builds .venv; every other target uses it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel by default; GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test test-fast test-dgl bench bench-scale figures lint clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,features,sweeps,knn]"

run:
	$(BIN)/python -m recgoat.run

# the suite on PYTEST_WORKERS processes (tests that share a fixture stay on one worker: --dist loadgroup)
PYTEST_WORKERS ?= 2
test:
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test-fast:
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

# The optional DGL backend in an environment of its own (DGL's wheels need torch <= 2.2.1, CPU only):
# a few GB of downloads the first time (PyPI's torch 2.2 is a CUDA build); the default install never needs it.
DGL_VENV ?= .venv-dgl
test-dgl:
	test -x $(DGL_VENV)/bin/python || $(PYTHON) -m venv $(DGL_VENV)
	$(DGL_VENV)/bin/python -m pip install --quiet -c constraints/dgl.txt torch dgl torchdata "setuptools<70" \
		pandas pydantic pyyaml psutil requests networkx
	$(DGL_VENV)/bin/python -m pip install --quiet -c constraints/dgl.txt -e ".[dev]"
	$(DGL_VENV)/bin/python -c "import torch, dgl; print('torch', torch.__version__, '| dgl', dgl.__version__)"
	$(DGL_VENV)/bin/python -m pytest -q -m dgl -p no:cacheprovider tests/test_dgl.py

bench:  # RecGOAT vs MGCN side by side (Baby size, ml100k_mm), then evaluation, training and recommend at Baby size
	$(BIN)/python benchmarks/bench.py

# cost vs size (Baby, Sports, Electronics statistics) for LightGCN and RecGOAT: table, log-log plot (logs/bench/)
SCALE_ARGS ?=
bench-scale:
	$(BIN)/python benchmarks/scale.py $(SCALE_ARGS)

figures:  # every figure of experiments/README.md from experiments/results/*.csv, and its tables
	$(BIN)/python -m recgoat.figures

lint:
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf logs .cache .pytest_cache build dist src/*.egg-info $(DGL_VENV)
