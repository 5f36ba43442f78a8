#!/usr/bin/env bash
# Runs a list of `python -m recgoat.run` commands on one GPU, PARALLEL at a time (issue 18's diagnosis on a
# lent GPU machine; small models leave an H200 mostly idle, so many runs share it). One torch thread per run.
#   bash experiments/gpu/runs.sh RUNS_FILE PARALLEL RESULTS_DIR [LIMIT_S]
#   TRAINER=default PY=.venv/bin/python bash experiments/gpu/runs.sh ...    # the same on the CPU
# RUNS_FILE: one run a line, `<name> <override> ...` ('#' lines skipped). Each run writes RESULTS_DIR/<name>/
# (results.json, run.log); RESULTS_DIR/summary.tsv gets a row per finished run (valid and test at the best
# valid epoch). Runs still going after LIMIT_S seconds are stopped (their rows are missing, not guessed).
set -uo pipefail
runs=$1 parallel=$2 results=$3 limit=${4:-100000}
PY=${PY:-python3}
TRAINER=${TRAINER:-gpu}
mkdir -p "$results"
run_one() {
  local name=$1; shift
  local dir=$results/$name
  [ -f "$dir/results.json" ] && return 0
  mkdir -p "$dir"
  OMP_NUM_THREADS=1 timeout "$limit" "$PY" -m recgoat.run "trainer=$TRAINER" logger=none trainer.enable_progress_bar=false \
    "hydra.run.dir=$dir" "$@" > "$dir/run.log" 2>&1 || echo "$name failed or stopped (rc $?)" >&2
}
export -f run_one; export results limit PY TRAINER
grep -v '^\s*#' "$runs" | grep -v '^\s*$' | xargs -P "$parallel" -L 1 bash -c 'run_one "$@"' _
"$PY" - "$results" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
rows = ["name\tvalid_recall@20\ttest_recall@20\ttest_ndcg@20\tbest_epoch\tepochs\tfit_s"]
for f in sorted(root.glob("*/results.json")):
    r = json.loads(f.read_text())
    t = r["test"] or {}
    rows.append(f"{f.parent.name}\t{r['valid']['recall@20']:.4f}\t{t.get('recall@20', float('nan')):.4f}\t"
                f"{t.get('ndcg@20', float('nan')):.4f}\t{r['best_epoch']}\t{r['timings']['epochs']}\t"
                f"{r['timings']['fit_s']:.0f}")
(root / "summary.tsv").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
