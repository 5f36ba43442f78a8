"""recommend and export from a checkpoint: the same scores and rankings as the model and evaluator."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from recgoat.export import export_embeddings
from recgoat.inference import CheckpointError, load_model
from recgoat.recommend import recommend, resolve_users
from tests.helpers import QUIET, TINY_DATA, make_evaluator, run_in_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = run_in_process(["model=lightgcn", *TINY_DATA, *QUIET, "trainer.max_epochs=3"], out)
    return out, res


def test_loaded_model_reproduces_the_run(trained):
    out, res = trained
    loaded = load_model(res["best_checkpoint"])
    ev = make_evaluator(loaded.dataset.train, ks=[10, 20])
    metrics = ev.evaluate(loaded.model.scorer(), loaded.dataset.test)
    assert metrics == pytest.approx(res["test"], abs=1e-12)


def test_export_inner_products_equal_model_scores(trained, tmp_path):
    _, res = trained
    loaded = load_model(res["best_checkpoint"])
    manifest = export_embeddings(loaded, tmp_path / "exp", ckpt=res["best_checkpoint"])
    u = np.load(tmp_path / "exp" / "user_embeddings.npy")
    i = np.load(tmp_path / "exp" / "item_embeddings.npy")
    assert manifest["dim"] == u.shape[1] == i.shape[1] and manifest["score"] == "inner_product"
    users = torch.arange(loaded.dataset.n_users)
    model_scores = loaded.model.scorer().score(users).numpy()
    np.testing.assert_allclose(u @ i.T, model_scores, rtol=1e-5, atol=1e-6)
    # id maps round-trip: row k of the files is the dataset's id k
    user_ids = (tmp_path / "exp" / "user_ids.txt").read_text().split()
    assert user_ids == [str(x) for x in loaded.dataset.user_ids]
    assert not any(p.name.startswith(".export") for p in (tmp_path / "exp").iterdir())


def test_recommend_equals_the_evaluators_ranking(trained):
    _, res = trained
    loaded = load_model(res["best_checkpoint"])
    users = np.arange(0, loaded.dataset.n_users, 3)
    recs = list(recommend(loaded, users, k=15, batch_size=7))
    ev = make_evaluator(loaded.dataset.train, ks=[15])
    _, expected = ev.rank(loaded.model.scorer(), torch.as_tensor(users), 15)
    assert [u for u, _, _ in recs] == users.tolist()
    for (u, items, _), exp in zip(recs, expected.numpy(), strict=True):
        assert items.tolist() == exp.tolist()
        assert not set(items.tolist()) & set(loaded.dataset.train[u].indices.tolist())
    with_valid = list(recommend(loaded, users[:5], k=15, exclude_valid=True))
    for u, items, _ in with_valid:
        assert not set(items.tolist()) & set(loaded.dataset.valid[u].indices.tolist())


def test_unknown_users_are_reported_not_fatal(trained):
    _, res = trained
    loaded = load_model(res["best_checkpoint"])
    known, unknown = resolve_users(loaded, ["3", "nobody", "7"])
    assert known.tolist() == [3, 7] and unknown == ["nobody"]


def test_recommend_cli_writes_original_ids(trained, tmp_path):
    _, res = trained
    users_file = tmp_path / "users.txt"
    users_file.write_text("2\n5\nghost\n")
    out = tmp_path / "recs.jsonl"
    proc = subprocess.run([sys.executable, "-m", "recgoat.recommend", f"ckpt={res['best_checkpoint']}",
                           f"users={users_file}", "k=5", f"out={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 unknown user id(s) skipped: ghost" in proc.stderr + proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == [2, 5] and all(len(r["items"]) == 5 for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)


def test_corrupt_and_foreign_checkpoints_fail_clearly(trained, tmp_path):
    _, res = trained
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"bad\.ckpt: not a readable checkpoint"):
        load_model(bad)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a recgoat checkpoint"):
        load_model(tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match=r"trained on dataset 'synthetic' \(150 users.*different data"):
        load_model(res["best_checkpoint"], dataset_overrides={"seed": 5})


def test_models_without_embeddings_cannot_be_exported(tiny_synthetic, tmp_path):
    from recgoat.inference import LoadedModel
    from recgoat.models import MostPop
    loaded = LoadedModel(MostPop(tiny_synthetic), tiny_synthetic, {"model": {"_target_": "MostPop"}}, {})
    with pytest.raises(ValueError, match="MostPop does not score by an inner product"):
        export_embeddings(loaded, tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_a_checkpoint_whose_relative_data_path_does_not_resolve_here_says_where_the_path_came_from(tmp_path,
                                                                                                  monkeypatch):
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    rows = [(u, i, 5, 0, 0 if i < 4 else 1 + (i % 2)) for u in range(6) for i in range(6)]
    (folder / "toy.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n"
                                      + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    res = run_in_process(["model=bpr", "dataset=mmrec", "dataset.path=data/toy", *QUIET, "trainer.max_epochs=1"],
                         tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"the dataset config comes from the checkpoint \(path 'data/toy', read "
                                              r"relative to the current directory .*\+dataset.path=<folder>"):
        load_model(res["best_checkpoint"])
    assert load_model(res["best_checkpoint"], dataset_overrides={"path": str(folder)}).dataset.n_users == 6


def test_outputs_of_the_wrong_kind_are_refused_before_any_work(trained, tmp_path):
    from recgoat.utils.io import check_output
    _, res = trained
    (tmp_path / "a_file").write_text("keep")
    for kind, out, message in (
            ("file", tmp_path, f"out={tmp_path} is a folder; this command writes one file there"),
            ("folder", tmp_path / "a_file", f"out={tmp_path / 'a_file'} is a file; this command writes a folder"),
            ("file", tmp_path / "a_file" / "recs.csv", f"{tmp_path / 'a_file'} is a file, so nothing can be")):
        with pytest.raises(ValueError, match=re.escape(message)):
            check_output(out, kind)
    assert check_output(tmp_path / "new" / "recs.csv", "file") == tmp_path / "new" / "recs.csv"
    proc = subprocess.run([sys.executable, "-m", "recgoat.recommend", f"ckpt={res['best_checkpoint']}",
                           f"out={tmp_path}"], capture_output=True, text=True, timeout=300)   # checked before loading
    assert proc.returncode != 0 and f"out={tmp_path} is a folder" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "keep"
