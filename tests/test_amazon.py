"""Raw Amazon dumps -> MMRec folder -> dataset and feature source; the UniSRec loader."""
from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest

from recgoat.data import DataError, load_mmrec, load_unisrec
from recgoat.data.amazon import convert_amazon
from recgoat.features.sources import amazon_items, item_text
from tests.conftest import shared_dataset


def write_dumps(tmp_path, n_users=40, n_items=25, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=8, replace=False):
            lines.append(json.dumps({"reviewerID": f"U{u}", "asin": f"B{i:04d}", "overall": 5.0,
                                     "unixReviewTime": 1400000000 + u}))
    lines.insert(3, "{this is not json")                   # malformed
    lines.insert(7, json.dumps({"asin": "B0001"}))        # no reviewer
    lines.append(json.dumps({"reviewerID": "lonely", "asin": "B9999", "overall": 1.0}))  # removed by the 5-core
    reviews = tmp_path / "reviews_Toy_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write("\n".join(lines) + "\n")
    meta_lines = [repr({"asin": f"B{i:04d}", "title": f"Toy {i}", "brand": "Acme",
                        "categories": [["Toys", "Blocks"]], "imUrl": f"http://img/{i}.jpg"}) for i in range(n_items)]
    meta_lines.insert(2, "garbage line")
    meta = tmp_path / "meta_Toy.json"
    meta.write_text("\n".join(meta_lines) + "\n")
    return reviews, meta


def test_convert_then_load_and_describe(tmp_path, caplog):
    reviews, meta = write_dumps(tmp_path)
    with caplog.at_level(logging.WARNING):
        summary = convert_amazon(reviews, tmp_path / "toy", meta=meta)
    assert summary["malformed_review_lines"] == 1 and summary["reviews_without_ids"] == 1
    assert summary["malformed_meta_lines"] == 1 and summary["items_with_metadata"] == summary["items"]
    assert summary["users"] == 40 and summary["interactions"] == 320     # the lonely reviewer is gone
    assert "reviews_Toy_5.json.gz:4: neither JSON nor a Python dict literal" in caplog.text
    d = load_mmrec(tmp_path / "toy")
    assert d.name == "reviews_Toy_5" and d.train.nnz + d.valid.nnz + d.test.nnz == 320
    assert all(str(u).startswith("U") for u in d.user_ids) and d.item_ids[0] == "B0000"
    items = amazon_items(tmp_path / "toy")
    text, missing = item_text(items[d.item_ids[3]], ["title", "brand", "category", "description"])
    assert text == f"Title: Toy {int(d.item_ids[3][1:])}. Brand: Acme. Category: Blocks." and missing == ["description"]


def test_convert_refuses_empty_results(tmp_path):
    reviews, _ = write_dumps(tmp_path)
    with pytest.raises(DataError, match="nothing survives the 50/5-core filter"):
        convert_amazon(reviews, tmp_path / "x", user_k=50)


def test_scientific_unisrec_keeps_the_shipped_leave_one_out_split():
    d = load_unisrec(shared_dataset("amazon-scientific-unisrec"))
    assert (d.n_users, d.n_items) == (8442, 4385)
    # one valid and one test item per user, except the repeat purchases dropped as duplicates
    assert d.valid.nnz >= 8442 - 60 and d.test.nnz >= 8442 - 60
    assert d.item_ids[0] == "B00TNNWMXI" and d.user_ids[0] == "ABW8NXS7SV55K"
