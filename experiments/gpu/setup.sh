#!/usr/bin/env bash
# Source on the lent GPU machine (its python3 has torch, Lightning and PyG; nothing can be fetched there):
# installs the carried wheels (.whl: hydra-core, omegaconf, antlr4, geomloss, optuna and its SQL stack) into
# /tmp/site and points recgoat at the carried data (.devdata) and features (.cache).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export RECGOAT_DATA_DIR=$PWD/.devdata RECGOAT_CACHE_DIR=$PWD/.cache RECGOAT_LOG_DIR=/tmp/logs
python3 -c "import torch, recgoat.run, optuna, geomloss; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
