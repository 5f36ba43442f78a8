#!/usr/bin/env bash
# The GPU checks, one script (<= 9 minutes on one GPU): the GPU tests (-m gpu: trainer=gpu for every model,
# RecGOAT GPU vs CPU, mixed precision); RecGOAT's and MGCN's step side by side on the GPU (Baby size, and ml100k_mm
# where its features are built: s / epoch, aten ops, host syncs, eager and with the Sinkhorn solvers compiled); five
# epochs of each on ml100k_mm as whole runs; then the scale bench at Baby and Electronics size, one table.
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
echo "== RecGOAT (published), recgoat_mgcn and MGCN, side by side on the GPU"
timeout 150 "$PY" benchmarks/bench.py --only-side-by-side --device cuda --steps 5 --rounds 3 2>&1 \
  | tee "$OUT/gpu-$stamp-side-by-side.txt" | grep -v "^\[" || true
if "$PY" -c "from benchmarks.bench import ml100k_mm; import sys; sys.exit(ml100k_mm() is None)" 2>/dev/null; then
  echo "== five epochs of each on ml100k_mm, whole runs (s / epoch in results.json)"
  for m in recgoat recgoat_mgcn mgcn; do
    timeout 90 "$PY" -m recgoat.run model=$m dataset=ml100k_mm trainer=gpu trainer.max_epochs=5 \
      trainer.enable_progress_bar=false logger=none hydra.run.dir="$OUT/gpu-$stamp-$m" | tail -3 || true
    "$PY" -c "import json,sys; t=json.load(open(sys.argv[1]))['timings']; print(sys.argv[2], 's/epoch', t['train_epoch_s'])" \
      "$OUT/gpu-$stamp-$m/results.json" $m || true
  done
fi
echo "== scale bench on the GPU: Baby and Electronics sizes, LightGCN and RecGOAT"
timeout 200 "$PY" benchmarks/scale.py --device cuda --sizes baby electronics --steps 5 --out "$OUT/gpu-$stamp"
