"""Mistakes a new user makes get a clear message naming the setting, before any work or any file is written."""
from __future__ import annotations

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from recgoat.data import DataError, RecDataset
from recgoat.inference import CheckpointError, LoadedModel
from recgoat.models import MostPop
from recgoat.recommend import main as recommend_main
from recgoat.recommend import recommend
from recgoat.utils.config import build_model, compose
from tests.helpers import QUIET, TINY_DATA, run_in_process

RUN = [*TINY_DATA, *QUIET, "trainer.max_epochs=1"]


@pytest.mark.parametrize("override,message", [
    ("evaluation.ks=[5,10]", r"monitor=recall@20 is not among the evaluated metrics .*add its cut-off to "
                             r"evaluation.ks \(now \[5, 10\]\)"),
    ("trainer.max_epochs=0", r"trainer.max_epochs must be >= 1 to train RecGOAT \(got 0\)"),
    ("evaluation.user_batch=0", r"evaluation.user_batch and evaluation.item_chunk must be positive integers"),
    ("datamodule.batch_size=0", r"datamodule.batch_size must be a positive integer, got 0"),
    ("model.embedding_dim=0", r"model.embedding_dim must be a positive integer, got 0"),
    ("trainer.max_epochs=abc", r"trainer.max_epochs='abc': pytorch_lightning.Trainer takes Optional\[int\] there"),
    ("optimizer.lr=abc", r"optimizer.lr='abc': torch.optim.Adam takes float \| torch.Tensor there"),
    ("seed=1.5", r"datamodule.seed=1.5 \(from \$\{seed\}\): recgoat.training.RecDataModule takes int there"),
])
def test_bad_run_settings_are_named_before_training(tmp_path, override, message):
    with pytest.raises(Exception, match=message):
        run_in_process([*RUN, override], tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_a_damaged_checkpoint_given_as_ckpt_path_is_named(tmp_path, content):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{ckpt}: not a readable checkpoint"):
        run_in_process([*RUN, f"ckpt_path={ckpt}"], tmp_path / "run")


def test_a_checkpoint_of_another_model_or_other_data_given_as_ckpt_path_is_named(tmp_path):
    trained = run_in_process(["model=lightgcn", *RUN], tmp_path / "lightgcn")
    ckpt = trained["best_checkpoint"]
    with pytest.raises(CheckpointError, match=rf"ckpt_path={ckpt}: its weights are a recgoat.models.LightGCN's, "
                                              rf"which do not fit this run's BPRMF \(missing .*start from a "
                                              rf"checkpoint of the same model"):
        run_in_process(["model=bpr", *RUN, f"ckpt_path={ckpt}"], tmp_path / "bpr")
    with pytest.raises(CheckpointError, match=r"its weights are a recgoat.models.LightGCN's.*\(item_emb is \[100, 64\] "
                                              r"there, \[100, 32\] here\)"):
        run_in_process(["model=lightgcn", "model.embedding_dim=32", *RUN, f"ckpt_path={ckpt}"], tmp_path / "dim")
    recgoat = run_in_process(["model=recgoat", *RUN], tmp_path / "recgoat")["best_checkpoint"]   # extra state too
    with pytest.raises(CheckpointError, match=r"its weights are a recgoat.models.RecGOAT's, which do not fit this "
                                              r"run's LightGCN \(missing \[\], unexpected \['alignment"):
        run_in_process(["model=lightgcn", *RUN, f"ckpt_path={recgoat}"], tmp_path / "from_recgoat")
    with pytest.raises(CheckpointError, match=rf"ckpt_path={ckpt}: .*but the data loaded now is 'synthetic' \(150 "
                                              rf"users.*start from a checkpoint of this data"):
        run_in_process(["model=lightgcn", *RUN, "dataset.seed=5", f"ckpt_path={ckpt}"], tmp_path / "data")


def test_zero_dim_bpr_and_features_without_columns_or_values_are_refused(tiny_synthetic, tmp_path):
    with pytest.raises(ValueError, match="model.embedding_dim must be a positive integer, got 0"):
        build_model(tiny_synthetic, ["model=bpr", "model.embedding_dim=0"])
    d = tiny_synthetic
    for features, message in (
            ({"text": np.zeros((d.n_items, 0), np.float32)}, r"item feature 'text': shape \(90, 0\) has no feature"),
            ({"text": np.zeros((d.n_items, 8), np.float32)}, r"item feature 'text': all 90 rows are all zeros")):
        bad = RecDataset("bad", d.train, d.valid, d.test, item_features=features, user_features=d.user_features)
        with pytest.raises(DataError, match=message):
            build_model(bad, ["model=vbpr", "model.missing_features=mean"])


def test_recommend_refuses_a_bad_k_and_format_and_leaves_no_stray_file(tiny_synthetic, tmp_path):
    loaded = LoadedModel(MostPop(tiny_synthetic), tiny_synthetic, {}, {})
    with pytest.raises(ValueError, match="k must be a positive integer, got -1"):
        next(recommend(loaded, np.arange(3), k=-1))
    out = tmp_path / "recs.xml"
    cfg = compose(["ckpt=/nowhere.ckpt", "format=xml", f"out={out}"], config_name="recommend")
    with pytest.raises(ValueError, match="format must be 'jsonl' or 'csv', got 'xml'"):
        recommend_main.__wrapped__(cfg)
    assert list(tmp_path.iterdir()) == []
    cfg = compose(["ckpt=/nowhere.ckpt", "k=abc", f"out={out}"], config_name="recommend")
    with pytest.raises(ValueError, match="k must be an int, got 'abc'"):     # named before the checkpoint is read
        recommend_main.__wrapped__(cfg)
    _, items, _ = next(recommend(loaded, np.arange(1), k=2))   # the same call with a valid k works
    assert len(items) == 2


def test_the_feature_pipeline_never_guesses_the_metadata_source():
    with pytest.raises(ConfigCompositionException, match="You must specify 'features'"):
        compose(["dataset=mmrec", "dataset.path=/any/folder"], config_name="features")


def test_keys_a_debug_config_brings_to_another_dataset_are_traced_to_it(tmp_path):
    from recgoat.utils.config import ConfigError
    (tmp_path / "events.csv").write_text("user_id,item_id\n" + "".join(f"u{u},i{u % 7}\n" for u in range(30)))
    with pytest.raises(ConfigError, match=r"dataset: unknown key\(s\) \['n_users', .* for recgoat.data.load_csv .*; "
                                          r"debug=tiny brought these keys \(its own data's, conf/debug/tiny.yaml\)"):
        run_in_process(["debug=tiny", "dataset=csv", f"dataset.path={tmp_path / 'events.csv'}"], tmp_path / "run")
