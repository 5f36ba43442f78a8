"""Our evaluator against MMRec's own metric code, on the same scores: values and seconds.

    python benchmarks/mmrec_parity.py --mmrec <a checkout of github.com/enoche/MMRec> [--users 19445 --items 7050]

Random scores (the held-out items lifted by a random amount) for Baby-sized data (a random train / test
split, 19,445 users x 7,050 items by default). MMRec's
path is its own: ``TopKEvaluator.evaluate`` (the top-k of the scores with training items set to -1e10, as its
trainer masks them, then a Python loop per user building the hit matrix and ``utils/metrics.py``), imported from
the checkout and run as its lines are, without the final rounding to 4 digits. Two patches, listed: ``np.float``
(removed in numpy 1.24) is set to ``float`` before the import, and an empty ``pandas`` module stands in for the
one MMRec imports only to save rankings to a file (off here).
Continuous random scores have no ties, so both rank the same items. Writes ``experiments/results/mmrec_parity.csv``
(metric, ours, MMRec's, the absolute difference) and prints both evaluators' seconds.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recgoat.eval import FullRankingEvaluator
from recgoat.eval.metrics import METRICS, users_with_items

OUT = Path(__file__).resolve().parents[1] / "experiments" / "results" / "mmrec_parity.csv"


def random_split(n_users: int, n_items: int, per_user: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    test_len = rng.integers(1, per_user // 2, n_users)
    rows = np.repeat(np.arange(n_users), per_user)
    is_test = (np.arange(per_user)[None, :] < test_len[:, None]).ravel()
    ones = np.ones(is_test.sum(), np.float32)
    test = sp.csr_matrix((ones, (rows[is_test], items.ravel()[is_test])), shape=(n_users, n_items))
    ones = np.ones((~is_test).sum(), np.float32)
    train = sp.csr_matrix((ones, (rows[~is_test], items.ravel()[~is_test])), shape=(n_users, n_items))
    return train, test


class _EvalData:
    """The two methods of MMRec's eval dataloader that ``TopKEvaluator.evaluate`` reads."""

    def __init__(self, test: sp.csr_matrix, users: np.ndarray):
        self.items = [test.indices[test.indptr[u]:test.indptr[u + 1]] for u in users]

    def get_eval_items(self):
        return self.items

    def get_eval_len_list(self):
        return np.asarray([len(i) for i in self.items])


def mmrec_metrics(mmrec: Path, scores: torch.Tensor, train: sp.csr_matrix, test: sp.csr_matrix, users: np.ndarray,
                  ks: list[int]) -> tuple[dict[str, float], float]:
    np.float = float  # patch 1: MMRec's metrics use np.float, removed in numpy 1.24
    sys.modules.setdefault("pandas", types.ModuleType("pandas"))  # patch 2: read only to save rankings (off here)
    sys.path.insert(0, str(mmrec / "src"))
    from utils.topk_evaluator import TopKEvaluator

    evaluator = TopKEvaluator({"metrics": ["Recall", "NDCG", "Precision", "MAP"], "topk": ks,
                               "save_recommended_topk": False})
    t = time.perf_counter()
    masked = scores[users].clone()
    sub = train[users].tocoo()
    masked[torch.as_tensor(sub.row), torch.as_tensor(sub.col)] = -1e10        # MMRec's trainer masks train items
    topk_index = torch.cat([torch.topk(masked[b:b + 2048], max(ks), dim=-1)[1]
                            for b in range(0, len(users), 2048)]).numpy()
    # TopKEvaluator.evaluate's own lines, without its rounding of the results to 4 digits
    data = _EvalData(test, users)
    bool_rec_matrix = np.asarray([[i in m for i in n] for m, n in zip(data.get_eval_items(), topk_index,
                                                                        strict=True)])
    values = evaluator._calculate_metrics(data.get_eval_len_list(), bool_rec_matrix)
    seconds = time.perf_counter() - t
    return {f"{m}@{k}": float(v[k - 1]) for m, v in zip(evaluator.metrics, values, strict=True) for k in ks}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmrec", required=True, type=Path, help="a checkout of github.com/enoche/MMRec")
    parser.add_argument("--users", type=int, default=19445)
    parser.add_argument("--items", type=int, default=7050)
    parser.add_argument("--per-user", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ks = [10, 20]
    train, test = random_split(args.users, args.items, args.per_user, args.seed)
    users = users_with_items(test)
    gen = torch.Generator().manual_seed(args.seed)
    scores = torch.rand(args.users, args.items, generator=gen)
    held_out = test.tocoo()   # lift the held-out items by a random amount, so that a fair share of them is ranked
    rows, cols = torch.as_tensor(held_out.row, dtype=torch.long), torch.as_tensor(held_out.col, dtype=torch.long)
    scores[rows, cols] += torch.rand(len(rows), generator=gen)

    def score_fn(u: torch.Tensor, items: slice) -> torch.Tensor:
        return scores[u][:, items]

    evaluator = FullRankingEvaluator(train, ks=ks, user_batch=2048, item_chunk=None, metrics=METRICS)
    t = time.perf_counter()
    ours = evaluator.evaluate(score_fn, test)
    ours_s = time.perf_counter() - t
    theirs, theirs_s = mmrec_metrics(args.mmrec, scores, train, test, users, ks)
    rows = []
    for metric in ("recall", "ndcg", "precision", "map"):
        for k in ks:
            mine = ours[f"{metric}@{k}"]
            other = theirs[f"{metric}@{k}"]
            rows.append([f"{metric}@{k}", f"{mine:.6f}", f"{other:.6f}", f"{abs(mine - other):.1e}"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as f:
        csv.writer(f).writerows([["metric", "recgoat", "MMRec", "abs difference"], *rows])
    print(f"{len(users)} users x {args.items} items: recgoat {ours_s:.2f} s, MMRec {theirs_s:.2f} s "
          f"({theirs_s / ours_s:.1f}x); written: {OUT}")
    for r in rows:
        print(" ".join(r))


if __name__ == "__main__":
    main()
