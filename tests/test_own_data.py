"""Your own data: the CSV interactions loader, the item-table metadata source, and the README's walkthrough
run as written on a fixture the test writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recgoat.data import DataError, split_per_user
from recgoat.features.sources import table_items


def csv_load(path, name="toy", **keys):
    """``dataset=csv`` built from its config, with ``keys`` as overrides (``columns`` a dict of its own)."""
    from hydra.utils import instantiate

    from recgoat.utils.config import compose
    overrides = [f"dataset.columns.{k}={v}" for k, v in keys.pop("columns", {}).items()]
    overrides += [f"dataset.{k}={v}" for k, v in keys.items()]
    return instantiate(compose(["dataset=csv", f"dataset.path={path}", f"dataset.name={name}", *overrides]).dataset)


def write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def pairs_of(d, split):
    m = d.split(split).tocoo()
    return {(d.user_ids[u], d.item_ids[i]) for u, i in zip(m.row, m.col, strict=True)}


def test_columns_are_mapped_ids_kept_and_the_random_split_is_the_protocols(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"cust-{u}", 100 + int(i), int(rng.integers(1, 6)), int(rng.integers(0, 10**6)))
            for u in range(30) for i in rng.choice(40, size=12, replace=False)]
    path = write(tmp_path / "ratings.csv", "stars,customer,when,product", [(r[2], r[0], r[3], r[1]) for r in rows])
    d = csv_load(path, columns={"user": "customer", "item": "product", "rating": "stars"}, name="shop")
    assert d.name == "shop" and d.n_users == 30
    assert list(d.user_ids) == sorted({r[0] for r in rows})  # string ids sort as strings
    assert d.item_ids.dtype == np.int64 and list(d.item_ids) == sorted({r[1] for r in rows})  # integers numerically
    everything = set().union(*(pairs_of(d, s) for s in ("train", "valid", "test")))
    assert everything == {(r[0], r[1]) for r in rows}
    # the protocol's split: the same labels split_per_user gives the users' indices in file order
    users = np.searchsorted(np.asarray(d.user_ids, dtype=str), [r[0] for r in rows])
    labels = split_per_user(users, seed=999)
    expected_test = {(r[0], r[1]) for r, lab in zip(rows, labels, strict=True) if lab == 2}
    assert pairs_of(d, "test") == expected_test

    kept = csv_load(path, columns={"user": "customer", "item": "product", "rating": "stars"}, min_rating=4)
    kept_pairs = set().union(*(pairs_of(kept, s) for s in ("train", "valid", "test")))
    assert kept_pairs == {(r[0], r[1]) for r in rows if r[2] >= 4}


def test_duplicates_count_once_and_the_k_core_holds(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(u, int(i)) for u in range(50) for i in rng.choice(60, size=int(rng.integers(2, 15)), replace=False)]
    path = write(tmp_path / "inter.csv", "user_id,item_id", rows + rows[:7])  # 7 repeated rows
    d = csv_load(path)
    assert d.train.nnz + d.valid.nnz + d.test.nnz == len(rows)
    core = csv_load(path, user_k=5, item_k=4)
    full = core.train + core.valid + core.test
    assert np.asarray(full.sum(1)).min() >= 5 and np.asarray(full.sum(0)).min() >= 4
    # brute force: the largest sub-table where every user has >= 5 and every item >= 4 interactions
    left = set(rows)
    while True:
        uc, ic = {}, {}
        for u, i in left:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        drop = {(u, i) for u, i in left if uc[u] < 5 or ic[i] < 4}
        if not drop:
            break
        left -= drop
    assert set().union(*(pairs_of(core, s) for s in ("train", "valid", "test"))) == left


def test_temporal_leave_one_out_holds_out_each_users_latest(tmp_path):
    rows = [("a", "x", 5), ("a", "y", 1), ("a", "z", 9), ("a", "w", 3),   # a: z latest, x before it
            ("b", "x", 2), ("b", "y", 2), ("b", "z", 1),                  # b: tie at 2, file order: y after x
            ("c", "x", 1), ("c", "y", 2)]                                 # c: 2 interactions, all train
    path = write(tmp_path / "t.tsv", "user_id\titem_id\tts", [])
    path.write_text("user_id\titem_id\tts\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    d = csv_load(path, columns={"timestamp": "ts"}, split="temporal_loo")
    assert pairs_of(d, "test") == {("a", "z"), ("b", "y")}
    assert pairs_of(d, "valid") == {("a", "x"), ("b", "x")}
    assert pairs_of(d, "train") == {("a", "y"), ("a", "w"), ("b", "z"), ("c", "x"), ("c", "y")}


@pytest.mark.parametrize("body,kwargs,message", [
    ("user_id,item_id\nu1,i1\nu2\n", {}, r"bad.csv:3: 1 fields, the header has 2"),
    ("user_id,item_id\nu1,i1\n,i2\n", {}, r"bad.csv:3: field 'user_id' \(user id\) is empty"),
    ("user_id,item_id,r\nu1,i1,5\nu1,i2,five\n", {"columns": {"rating": "r"}, "min_rating": 3},
     r"bad.csv:3: field 'r' = 'five' is not a number"),
    ("customer,item_id\nu1,i1\n", {}, r"bad.csv:1: no column user='user_id' in the header \['customer', 'item_id'\]"),
    ("user_id,item_id\nu1,i1\n", {"split": "temporal_loo"}, r"split=temporal_loo needs dataset.columns.timestamp"),
    ("user_id,item_id\nu1,i1\n", {"min_rating": 4}, r"min_rating=4 needs dataset.columns.rating"),
    ("user_id,item_id\n", {}, r"bad.csv: no interactions below the header"),
])
def test_malformed_input_is_named_by_file_line_and_field(tmp_path, body, kwargs, message):
    from hydra.errors import InstantiationException
    (tmp_path / "bad.csv").write_text(body)
    with pytest.raises((DataError, InstantiationException), match=message):  # Hydra wraps the loader's error
        csv_load(tmp_path / "bad.csv", **kwargs)


def test_parquet_reads_like_csv_where_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (Parquet is optional)")
    import pyarrow.parquet as pq
    rows = [(f"u{u}", f"i{(u * 7 + k) % 20}") for u in range(15) for k in range(6)]
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows]}),
                   tmp_path / "x.parquet")
    a, b = csv_load(tmp_path / "x.parquet"), csv_load(write(tmp_path / "x.csv", "user_id,item_id", rows))
    assert a.fingerprint() == b.fingerprint()


def test_item_table_names_its_columns_resolves_images_and_checks_rows(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"not checked here")
    (tmp_path / "items.csv").write_text("sku,name,about,pic\nA,Lamp,A desk lamp,img/a.jpg\nB,Chair,,img/b.jpg\n"
                                        "A,Other,ignored,\n")
    items = table_items(tmp_path / "items.csv", "sku", ["name", "about"], "pic")
    assert items == {"A": {"name": "Lamp", "about": "A desk lamp", "image": tmp_path / "img" / "a.jpg"},
                     "B": {"name": "Chair", "about": None, "image": None}}  # b.jpg does not exist
    assert "1 repeated item id(s), the first row of each is used: 'A' (line 4, first on line 2)" in caplog.text
    (tmp_path / "items.jsonl").write_text('{"sku": "A", "name": "Lamp"}\n\n{"sku": 7, "name": "Seven"}\n')
    assert table_items(tmp_path / "items.jsonl", "sku", ["name"]) == {"A": {"name": "Lamp", "image": None},
                                                                       "7": {"name": "Seven", "image": None}}
    (tmp_path / "bad.jsonl").write_text('{"sku": "A"}\n{"name": "no id"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'sku' \(the item id\) is empty"):
        table_items(tmp_path / "bad.jsonl", "sku", ["name"])
    with pytest.raises(DataError, match=r"items.csv:1: no column\(s\) \['title'\]"):
        table_items(tmp_path / "items.csv", "sku", ["title"])


def write_shop(root: Path) -> Path:
    """A small shop: customers in two taste groups, products with names, descriptions and photos (some
    missing), and one product without a table row."""
    from PIL import Image
    rng = np.random.default_rng(0)
    shop = root / "shop"
    (shop / "photos").mkdir(parents=True)
    lines = ["customer,product,stars"]
    for c in range(1, 41):
        group = c % 2
        pool = [p for p in range(1, 31) if p % 2 == group] * 3 + list(range(1, 31))
        for p in sorted(set(rng.choice(pool, size=14).tolist())):
            lines.append(f"c{c},p{p},{int(rng.integers(2 if p % 2 == group else 1, 6))}")
    (shop / "interactions.csv").write_text("\n".join(lines) + "\n")
    rows = ["product,name,description,photo"]
    for p in range(1, 30):  # p30 has no row
        kind = "garden tool" if p % 2 else "kitchen gadget"
        photo = f"photos/p{p}.jpg"
        if p % 7:
            colour = (200, 60, 60) if p % 2 else (60, 60, 200)
            Image.new("RGB", (48, 40), colour).save(shop / photo)
        rows.append(f'p{p},Product {p},"A sturdy {kind}, model {p}",{photo}')
    (shop / "products.csv").write_text("\n".join(rows) + "\n")
    return shop


@pytest.mark.slow
def test_the_readmes_own_data_walkthrough_runs_as_written(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the 'features' extra is not installed")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    shop = write_shop(tmp_path)
    env = {**os.environ, "RECGOAT_CACHE_DIR": str(tmp_path / "cache"), "RECGOAT_LOG_DIR": str(tmp_path / "logs"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    bin_dir = tmp_path / "bin"  # `python` in the README is this interpreter
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    features = tmp_path / "cache" / "features" / "shop"
    text = json.loads((features / "text_feat.json").read_text())
    image = json.loads((features / "image_feat.json").read_text())
    assert text["items_without_metadata"] == ["p30"]
    assert sorted(image["missing_images"]) == ["p14", "p21", "p28", "p30", "p7"]  # no photo file, or no row
    results = json.loads((shop / "run" / "results.json").read_text())
    profiles = (features / "user_profiles.txt").read_text().splitlines()  # the template profiles, one per customer
    assert len(profiles) == results["dataset"]["n_users"]
    assert all("Name: Product " in p and "Description: A sturdy " in p for p in profiles)  # the table's columns
    assert results["model"] == "RecGOAT" and results["dataset"]["name"] == "shop"
    assert 0.0 < results["test"]["recall@20"] <= 1.0
    recs = [json.loads(line) for line in (shop / "recs.jsonl").read_text().splitlines()]
    assert [r["user"] for r in recs] == ["c1", "c2"] and all(len(r["items"]) == 5 for r in recs)
    data = csv_load(shop / "interactions.csv", columns={"user": "customer", "item": "product", "rating": "stars"},
                    min_rating=3)
    for r in recs:  # real product ids, none of them the customer's training items
        row = list(data.user_ids).index(r["user"])
        train_items = {data.item_ids[i] for i in data.train[row].indices}
        assert all(str(i).startswith("p") for i in r["items"]) and len(set(r["items"])) == 5
        assert not set(r["items"]) & train_items


def features_of_a_small_shop(tmp_path, name: str, rows_of, order):
    """A 12-user shop's interactions, and a feature file ``name`` of random rows (``rows_of(dataset)`` of them)
    whose sidecar records ``order(dataset)`` as its row order; returns (interactions, pairs, dataset, folder, x)."""
    from recgoat.features.provenance import write_features
    rows = [(f"u{u}", f"p{i}") for u in range(12) for i in range(u % 4, u % 4 + 6)]
    path = write(tmp_path / "shop.csv", "user_id,item_id", rows)
    d = csv_load(path)
    feats = tmp_path / "features"
    x = np.random.default_rng(0).normal(size=(rows_of(d), 4)).astype(np.float32)
    write_features(feats / name, x, {"name": "test"}, "inputs", row_order=order(d))
    return path, rows, d, feats, x


def test_features_built_for_other_item_ids_are_refused_with_both_hashes(tmp_path):
    from recgoat.data.features import ids_digest
    path, rows, d, feats, x = features_of_a_small_shop(
        tmp_path, "text_feat.npy", lambda d: d.n_items,
        lambda d: {"item_ids_sha256": ids_digest(d.item_ids), "n_rows": d.n_items})
    np.testing.assert_array_equal(csv_load(path, feature_dir=feats).item_features["text"], x)  # the same ids: read
    renamed = write(tmp_path / "renamed.csv", "user_id,item_id",   # one item renamed: the same count, other ids
                    [(u, "p99" if i == "p0" else i) for u, i in rows])
    with pytest.raises(Exception, match=rf"text_feat.npy: built for other item ids than dataset 'toy' has .*records "
                                        rf"item ids sha256 {ids_digest(d.item_ids)[:12]}, the data's are "
                                        rf"[0-9a-f]{{12}}.*python -m recgoat.features") as refused:
        csv_load(renamed, feature_dir=feats)
    assert isinstance(refused.value.__cause__ or refused.value, DataError)  # Hydra wraps what the loader raised


def test_user_profiles_of_another_split_are_refused_naming_both(tmp_path):
    from recgoat.data.features import ids_digest, train_digest
    path, _, d, feats, x = features_of_a_small_shop(
        tmp_path, "user_pref_feat.npy", lambda d: d.n_users,
        lambda d: {"user_ids_sha256": ids_digest(d.user_ids), "train_sha256": train_digest(d)})
    np.testing.assert_array_equal(csv_load(path, feature_dir=feats).user_features, x)   # its own split: read
    other = csv_load(path, split_seed=1)
    assert train_digest(other) != train_digest(d)
    with pytest.raises(Exception, match=rf"user_pref_feat.npy: built from the training interactions of another split "
                                        rf".*train sha256 {train_digest(d)[:12]}.*this run's split has "
                                        rf"{train_digest(other)[:12]}\): its profiles are built from training items") \
            as refused:
        csv_load(path, feature_dir=feats, split_seed=1)
    assert isinstance(refused.value.__cause__ or refused.value, DataError)


def test_ids_are_never_coerced_into_one_another(tmp_path):
    rows = [(u, i) for u in ("7", "007", "1_0", "10") for i in ("a", "b", "c")]
    d = csv_load(write(tmp_path / "ids.csv", "user_id,item_id", rows))
    assert sorted(d.user_ids) == ["007", "10", "1_0", "7"]               # four customers, not two
    items = (3, 20, 100, 4, 5, 6, 7, 8, 9, 11)
    numeric = csv_load(write(tmp_path / "num.csv", "user_id,item_id", [(u, i) for u in (10, 9, -1) for i in items]))
    assert numeric.user_ids.tolist() == [-1, 9, 10] and numeric.item_ids.tolist() == sorted(items)  # numbers
    huge = csv_load(write(tmp_path / "huge.csv", "user_id,item_id", [(u, i) for u in (10**30, 9, 5) for i in items]))
    assert sorted(huge.user_ids) == ["1" + "0" * 30, "5", "9"]          # beyond int64: text, not an OverflowError


def test_an_id_with_a_line_break_and_a_repeated_header_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "nl.csv"
    path.write_text('user_id,item_id\nu1,i1\n"u\n2",i2\n')
    with pytest.raises(Exception, match=r"nl.csv:4: field 'user_id' \(user id\) .*u.*2.* holds a line break"):
        csv_load(path)
    path = write(tmp_path / "twice.csv", "user_id,item_id", [("u1", "i1"), ("user_id", "item_id"), ("u2", "i2")])
    with pytest.raises(Exception, match=r"twice.csv:3: the header line again"):
        csv_load(path)
