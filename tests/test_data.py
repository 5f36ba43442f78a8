"""Loaders, splitting and bad-input errors, on real files written to tmp_path."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from recgoat.data import (
    DataError,
    kcore_filter,
    load_mmrec,
    load_movielens,
    load_split_txt,
    split_per_user,
)
from tests.conftest import shared_dataset
from tests.helpers import synthetic

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def write_mmrec(folder, rows, features=None, header=HEADER, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(header + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    for modality, x in (features or {}).items():
        np.save(folder / f"{modality}_feat.npy", x)
    return folder


def toy_rows():
    # 3 users x 4 items; every split non-empty
    return [(0, 0, 5, 1, 0), (0, 1, 4, 2, 0), (0, 2, 3, 3, 1), (0, 3, 1, 4, 2),
            (1, 1, 5, 1, 0), (1, 2, 5, 1, 0), (1, 0, 5, 1, 1), (1, 3, 5, 1, 2),
            (2, 3, 5, 1, 0), (2, 0, 5, 1, 0), (2, 1, 5, 1, 2), (2, 2, 5, 1, 1)]


def test_mmrec_folder_loads_splits_and_features(tmp_path):
    feats = {"text": np.random.default_rng(0).normal(size=(4, 5)), "image": np.ones((4, 3))}
    d = load_mmrec(write_mmrec(tmp_path / "toy", toy_rows(), feats))
    assert (d.n_users, d.n_items) == (3, 4)
    assert (d.train.nnz, d.valid.nnz, d.test.nnz) == (6, 3, 3)
    assert d.train[0].indices.tolist() == [0, 1] and d.test[2].indices.tolist() == [1]
    assert set(d.item_features) == {"text", "image"}
    assert d.item_features["text"].dtype == np.float32
    np.testing.assert_allclose(d.item_features["text"], feats["text"].astype(np.float32))


def test_mmrec_without_timestamp_column_and_other_order(tmp_path):
    rows = [(r[4], r[1], r[0]) for r in toy_rows()]
    d = load_mmrec(write_mmrec(tmp_path / "t", rows, header="x_label\titemID\tuserID\n"))
    assert d.train.nnz == 6


@pytest.mark.parametrize("bad_row, message", [
    ((0, "abc", 5, 1, 0), r"toy\.inter:14: field 'itemID' = 'abc' is not an integer"),
    ((-1, 2, 5, 1, 0), r"toy\.inter:14: field 'userID' = -1 is negative"),
    ((1, 2, 5, 1, 7), r"toy\.inter:14: field 'x_label' = 7 is not in 0\.\.2"),
    ((1, 2, 5), r"toy\.inter:14: 3 field\(s\), the header has 5"),
])
def test_malformed_inter_rows_name_file_line_and_field(tmp_path, bad_row, message):
    folder = write_mmrec(tmp_path / "toy", toy_rows() + [bad_row])
    with pytest.raises(DataError, match=message):
        load_mmrec(folder)


def test_missing_header_column_is_reported(tmp_path):
    folder = write_mmrec(tmp_path / "toy", [(0, 0)], header="userID\titemID\n")
    with pytest.raises(DataError, match=r"toy\.inter:1: header .* lacks column\(s\) \['x_label'\]"):
        load_mmrec(folder)


def test_item_id_beyond_feature_rows_names_the_line(tmp_path):
    rows = toy_rows() + [(2, 9, 5, 1, 0)]
    folder = write_mmrec(tmp_path / "toy", rows, {"text": np.zeros((4, 2))})
    with pytest.raises(DataError, match=r"text_feat\.npy: has 4 rows, but item id 9 \(.*toy\.inter:14\)"):
        load_mmrec(folder)


def test_feature_rows_must_match_items(tmp_path):
    folder = write_mmrec(tmp_path / "toy", toy_rows(), {"image": np.zeros((6, 2))})
    with pytest.raises(DataError, match=r"image_feat\.npy\): has 6 rows but the dataset has 4 items"):
        load_mmrec(folder)


def test_nan_features_name_the_row(tmp_path):
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    folder = write_mmrec(tmp_path / "toy", toy_rows(), {"text": x})
    with pytest.raises(DataError, match=r"text_feat\.npy\): 1 row\(s\) hold NaN or Inf, first at row 2"):
        load_mmrec(folder)


def test_unreadable_feature_file(tmp_path):
    folder = write_mmrec(tmp_path / "toy", toy_rows())
    (folder / "text_feat.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"text_feat\.npy: cannot read as a \.npy array"):
        load_mmrec(folder)


def test_empty_split_is_an_error(tmp_path):
    rows = [r for r in toy_rows() if r[4] != 2]
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_mmrec(write_mmrec(tmp_path / "toy", rows))


def test_duplicates_are_dropped_with_a_warning(tmp_path, caplog):
    rows = toy_rows() + [(0, 0, 5, 9, 0), (2, 2, 1, 1, 2)]  # dup in train; test pair that is in valid
    with caplog.at_level(logging.WARNING):
        d = load_mmrec(write_mmrec(tmp_path / "toy", rows))
    assert d.train.nnz == 6 and d.test.nnz == 3
    assert "1 duplicate interaction(s) in split 'train' dropped" in caplog.text
    assert "also in an earlier split" in caplog.text


def test_split_txt_loader_and_errors(tmp_path):
    for split, lines in {"train": "0 1 2\n1 0 2\n", "valid": "0 0\n1 1\n", "test": "0 3\n1 3\n"}.items():
        (tmp_path / f"{split}.txt").write_text(lines)
    d = load_split_txt(tmp_path)
    assert (d.n_users, d.n_items, d.train.nnz, d.valid.nnz, d.test.nnz) == (2, 4, 4, 2, 2)
    (tmp_path / "valid.txt").write_text("0 0\n1 x1\n")
    with pytest.raises(DataError, match=r"valid\.txt:2: field 'item \(token 2\)' = 'x1' is not an integer"):
        load_split_txt(tmp_path)
    (tmp_path / "valid.txt").unlink()
    with pytest.raises(DataError, match=r"valid\.txt: split file not found"):
        load_split_txt(tmp_path)


def test_split_per_user_follows_the_protocol():
    rng = np.random.default_rng(0)
    sizes = {0: 5, 1: 9, 2: 10, 3: 23, 4: 2}
    users = np.concatenate([np.full(n, u) for u, n in sizes.items()])
    rng.shuffle(users)
    labels = split_per_user(users, seed=11)
    for u, n in sizes.items():
        counts = np.bincount(labels[users == u], minlength=3)
        if n < 3:
            expected = (n, 0, 0)
        elif n < 10:
            expected = (n - 2, 1, 1)
        else:
            vt = int(0.2 * n)
            expected = (n - vt, vt // 2, vt - vt // 2)
        assert tuple(counts) == expected, (u, n)
    assert np.array_equal(labels, split_per_user(users, seed=11))
    assert not np.array_equal(labels, split_per_user(users, seed=12))


def test_kcore_filter_is_iterative():
    # item 9 has one interaction; removing it drops user 2 below 2, which drops item 1 below 2 ...
    users = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    items = np.array([0, 1, 0, 1, 1, 9, 2, 2])
    keep = kcore_filter(users, items, user_k=2, item_k=2)
    assert set(zip(users[keep], items[keep], strict=True)) == {(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2)}


def test_synthetic_is_deterministic_and_has_structure():
    a = synthetic(n_users=300, n_items=200, seed=1)
    b = synthetic(n_users=300, n_items=200, seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert synthetic(n_users=300, n_items=200, seed=2).fingerprint() != a.fingerprint()
    assert set(a.item_features) == {"text", "image"} and a.user_features.shape == (300, 32)
    # planted structure: items co-consumed by a user are closer in feature space than random pairs
    a = synthetic(seed=1)
    x = a.item_features["text"] / np.linalg.norm(a.item_features["text"], axis=1, keepdims=True)
    rows = [a.train[u].indices for u in range(a.n_users)]
    co = np.mean([x[r[0]] @ x[r[1]] for r in rows if len(r) > 1])
    rng = np.random.default_rng(0)
    rand = np.mean([x[i] @ x[j] for i, j in rng.integers(0, a.n_items, size=(2000, 2))])
    assert co > rand + 0.05


def test_amazon_baby_split_matches_mmrec_counts():
    d = load_split_txt(shared_dataset("amazon-baby"))
    assert (d.n_users, d.n_items) == (19445, 7050)
    assert (d.train.nnz, d.valid.nnz, d.test.nnz) == (118551, 20559, 21682)
    assert d.user_ids[0] == "A1HK2FQW6KXQB2" and d.item_ids[0] == "097293751X"


def test_movielens_local_folder():
    d = load_movielens(shared_dataset("ml100k-multimodal") / "ml-100k")
    assert (d.n_users, d.n_items) == (943, 1682)
    assert d.train.nnz + d.valid.nnz + d.test.nnz == 100_000
    assert d.item_ids[0] == 1


def test_movielens_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"u\.data: not found.*dataset\.download=true"):
        load_movielens(tmp_path / "nowhere")


def test_id_gaps_are_reindexed_with_a_warning_keeping_the_files_ids_and_feature_rows(tmp_path, caplog):
    from recgoat.inference import LoadedModel
    from recgoat.models import MostPop
    from recgoat.recommend import resolve_users

    rng = np.random.default_rng(0)
    users = list(range(30)) + [100]
    rows = [(u, i, 5, 1, label) for u in users for i, label in ((0, 0), (1, 0), (3, 0), (5, 1), (6, 2))]
    text = rng.normal(size=(7, 4)).astype(np.float32)            # item ids 0..6; 2 and 4 occur nowhere
    prefs = rng.normal(size=(101, 3)).astype(np.float32)
    folder = write_mmrec(tmp_path / "gaps", rows, features={"text": text})
    np.save(folder / "user_pref_feat.npy", prefs)
    with caplog.at_level("WARNING"):
        d = load_mmrec(folder)
    assert (d.n_users, d.n_items) == (31, 5)
    assert d.user_ids.tolist() == users and d.item_ids.tolist() == [0, 1, 3, 5, 6]
    np.testing.assert_array_equal(d.item_features["text"], text[[0, 1, 3, 5, 6]])
    np.testing.assert_array_equal(d.user_features, prefs[users])
    assert "70 of the user ids 0..100 occur in no interaction" in caplog.text
    assert "2 of the item ids 0..6 occur in no interaction" in caplog.text
    known, unknown = resolve_users(LoadedModel(MostPop(d), d, {}, {}), ["100", "50"])
    assert known.tolist() == [30] and unknown == ["50"]           # id 50 is in no file: not served


def test_a_non_utf8_byte_is_named_on_its_line_and_a_bom_is_ignored_with_a_warning(tmp_path, caplog):
    folder = write_mmrec(tmp_path / "enc", toy_rows())
    inter = folder / "toy.inter"
    lines = inter.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"\t5\t", b"\t\xe9\t", 1)                       # line 6: a Latin-1 byte
    inter.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"toy\.inter:6: byte 0xe9 at column \d+ is not UTF-8"):
        load_mmrec(folder)
    bom = write_mmrec(tmp_path / "bom", toy_rows())
    (bom / "toy.inter").write_bytes(b"\xef\xbb\xbf" + (bom / "toy.inter").read_bytes())
    with caplog.at_level("WARNING"):
        d = load_mmrec(bom)
    assert d.n_users == 3 and "byte-order mark (BOM); ignored" in caplog.text
