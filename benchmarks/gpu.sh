#!/usr/bin/env bash
# The GPU checks, one script (<= 6 minutes on one GPU): the GPU tests (-m gpu: trainer=gpu for every model,
# RecGOAT GPU vs CPU, mixed precision), then the scale bench on the GPU at Baby and Electronics size, one table.
# Needs the README's GPU install only:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" && bash benchmarks/gpu.sh
# Everything runs on the GPU, the exact kNN graphs too (model.knn_search.device=cuda: the O(n^2 d) search that takes
# ~20 min on 2 CPU cores at Electronics size). Results: logs/bench/gpu-*.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-logs/bench}
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: install a CUDA torch (README)'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== GPU tests"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-$stamp-tests.txt"
echo "== scale bench on the GPU: Baby and Electronics sizes, LightGCN and RecGOAT"
timeout 200 "$PY" benchmarks/scale.py --device cuda --sizes baby electronics --steps 5 --out "$OUT/gpu-$stamp"
