"""Configs as the single source of truth: every config composes and instantiates, every component key is one its
target takes, and no component a yaml instantiates has a Python default."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from recgoat.models import Recommender
from recgoat.utils.config import ConfigError, build_model, check_targets, compose
from tests.conftest import SHARED_DATA
from tests.helpers import compose_cfg, run_in_process

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return [p.stem for p in sorted((CONF / group).glob("*.yaml"))]


def target_nodes(node, path=""):
    """``(path, node)`` of every ``_target_`` node of a plain config tree."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from target_nodes(v, f"{path}.{k}" if path else k)


# dataset loaders are the data API: their None defaults mean "derive it" (a name from the folder, no modalities).
# Each entry: the overrides and the node whose components are checked (nested ones too: the layers of nn/, the
# evaluator of eval/, the kNN searches of graphs/).
GROUP_CONFIGS = ([([f"model={m}"], "model") for m in options("model")]
                 + [(["model=recgoat", f"model/{sub}={o}"], "model") for sub in ("user_branch", "knn_search")
                    for o in options(f"model/{sub}")]
                 + [([f"+experiment={e}"], "model") for e in options("experiment")]
                 + [([f"callbacks={c}"], "callbacks") for c in options("callbacks")]
                 + [([f"optimizer={o}"], "optimizer") for o in options("optimizer")]
                 + [([], "evaluation"), ([], "datamodule")])


@pytest.mark.parametrize("overrides,group", GROUP_CONFIGS, ids=[" ".join(o) or g for o, g in GROUP_CONFIGS])
def test_no_component_a_yaml_instantiates_has_a_python_default(overrides, group):
    """One default policy: every value of a component lives in its yaml, none in Python that could drift from it."""
    cfg = compose(overrides)
    tree = OmegaConf.to_container(cfg[group], resolve=False)
    checked = 0
    for path, node in target_nodes(tree, group):
        target = get_object(node["_target_"])
        if not (target.__init__ if inspect.isclass(target) else target).__module__.startswith("recgoat."):
            continue  # third-party defaults (Lightning, torch; also what our subclasses inherit) are not ours
        params = inspect.signature(target).parameters
        defaults = [n for n, p in params.items() if p.default is not inspect.Parameter.empty]
        assert defaults == [], f"{path} ({node['_target_']}): Python defaults for {defaults}"
        checked += 1
    assert checked or group == "optimizer" or overrides == ["model=mostpop"]


@pytest.mark.parametrize("model", options("model"))
def test_model_constructors_have_no_defaults_and_the_yaml_sets_every_argument(model):
    node = OmegaConf.to_container(compose([f"model={model}"]).model, resolve=False)
    cls = get_object(node["_target_"])
    assert issubclass(cls, Recommender)
    params = dict(inspect.signature(cls).parameters)
    params.pop("dataset")
    assert [n for n, p in params.items() if p.default is not inspect.Parameter.empty] == []
    assert set(params) == {k for k in node if not k.startswith("_")}


def test_the_authors_preset_experiment_composes_and_its_model_instantiates(tiny_synthetic, tmp_path):
    """Every other experiment trains in tests/test_recgoat.py; the d=800 preset is built here at d=64."""
    overrides = ["+experiment=authors_baby", f"paths.cache_dir={tmp_path}"]
    check_targets(compose(overrides))
    model = build_model(tiny_synthetic, [*overrides, "model.embedding_dim=64"])
    assert isinstance(model, Recommender) and model.scorer().score(torch.tensor([0, 1])).shape == (2, 90)


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_config_composes_and_loads(dataset, tmp_path):
    if dataset == "mmrec":
        folder = tmp_path / "toy"
        folder.mkdir()
        rows = [(u, i, 5, 0, 0 if i < 4 else 1 + (i % 2)) for u in range(6) for i in range(6)]
        (folder / "toy.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n"
                                          + "".join("\t".join(map(str, r)) + "\n" for r in rows))
        cfg = compose([f"dataset={dataset}", f"dataset.path={folder}"])
    elif dataset == "csv":
        path = tmp_path / "inter.csv"
        path.write_text("user_id,item_id\n" + "".join(f"u{u},i{i}\n" for u in range(6) for i in range(6)))
        cfg = compose([f"dataset={dataset}", f"dataset.path={path}", "dataset.name=toy"])
    else:
        cfg = compose([f"dataset={dataset}"])
        if dataset != "synthetic" and not SHARED_DATA.exists():
            pytest.skip(f"third-party data {SHARED_DATA} not present")
        feature_dir = cfg.dataset.get("feature_dir")
        if feature_dir and not Path(feature_dir).exists():
            pytest.skip(f"{dataset} needs features built by python -m recgoat.features (not at {feature_dir})")
    check_targets(cfg)
    data = instantiate(cfg.dataset)
    assert data.n_users > 0 and data.n_items > 0 and data.train.nnz > 0


@pytest.mark.parametrize("overrides", [["hydra/launcher=local_parallel"], ["hydra/launcher=slurm"],
                                       ["hydra/sweeper=space"]],
                         ids=lambda o: o[0])
def test_launcher_and_sweeper_configs_instantiate(overrides, tmp_path):
    cfg = compose_cfg(overrides, tmp_path)
    node = cfg.hydra.launcher if "launcher" in overrides[0] else cfg.hydra.sweeper
    assert type(instantiate(node)).__name__ == node._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("overrides", [[f"trainer={t}"] for t in options("trainer")]
                         + [[f"logger={lg}"] for lg in options("logger")], ids=lambda o: o[0])
def test_trainer_and_logger_configs_instantiate(overrides, tmp_path):
    if overrides == ["trainer=gpu"] and not torch.cuda.is_available():
        pytest.skip("trainer=gpu needs CUDA")
    cfg = compose_cfg(overrides, tmp_path)
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer.max_epochs == cfg.trainer.max_epochs and len(trainer.loggers) == len(loggers)


def test_a_misspelt_component_key_fails_at_start_up_naming_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.alignment\.cmcl: unknown key\(s\) \['tua'\] for recgoat\.nn\.CMCL "
                                          r"\(it takes: weight, tau, max_items\)"):
        run_in_process(["model=recgoat", "+model.alignment.cmcl.tua=0.5", "debug=fast"], tmp_path)
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['mode'\] for recgoat\.models\.RecGOAT"):
        run_in_process(["model=recgoat", "+model.mode=naive", "debug=fast"], tmp_path)


@pytest.mark.parametrize("override, message", [
    ("model.embedding_dim=abc", "model.embedding_dim='abc': recgoat.models.RecGOAT takes int there"),
    ("evaluation.user_batch=abc", "datamodule.eval_batch_size='abc' (from ${evaluation.user_batch}): "
                                   "recgoat.training.RecDataModule takes int there"),
    ("callbacks.early_stopping.patience=abc",   # a parameter of Lightning's class, passed on through **kwargs
     "callbacks.early_stopping.patience='abc': recgoat.training.EarlyStopping takes int there"),
    ("datamodule.batch_size=1.5", "datamodule.batch_size=1.5: recgoat.training.RecDataModule takes int there"),
    ("optimizer.lr=abc", "optimizer.lr='abc': torch.optim.Adam takes float | torch.Tensor there"),
    ("model.reg_weight=true", "model.reg_weight=True: recgoat.models.RecGOAT takes float there"),
    ("trainer.deterministic=maybe", "trainer.deterministic='maybe': pytorch_lightning.Trainer takes"),
])
def test_every_value_is_checked_against_its_parameter_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        run_in_process(["model=recgoat", override, "debug=tiny"], tmp_path)
    assert str(e.value).startswith(message)
    assert not tmp_path.exists()    # refused before anything was written: the empty run folder is removed again


def test_debug_fast_runs_recgoat_on_the_default_data(tmp_path):
    res = run_in_process(["debug=fast", "model=recgoat", f"paths.cache_dir={tmp_path}"], tmp_path)
    assert res["timings"]["epochs"] == 1 and res["best_epoch"] == 0
    assert res["config"]["trainer"]["limit_train_batches"] == 3 and res["dataset"]["name"] == "synthetic"


def test_debug_tiny_is_the_tests_tiny_data(tmp_path, tiny_synthetic):
    cfg = compose(["debug=tiny"])
    data = instantiate(cfg.dataset)
    assert (data.n_users, data.n_items) == (150, 100)
    assert {m: x.shape[1] for m, x in data.item_features.items()} == {"text": 8, "image": 12}


def test_the_readmes_add_a_model_example_trains_as_written(tmp_path, monkeypatch):
    """The README's "Adding a model" section, its Python file and yaml taken verbatim: one file + one yaml."""
    readme = (CONF.parent / "README.md").read_text()
    section = readme.split("## Adding a model", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    yaml = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mymf.py").write_text(code)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mymf.yaml").write_text(yaml.replace("recgoat.models.mymf.MyMF", "mymf.MyMF"))
    monkeypatch.syspath_prepend(str(tmp_path))   # the file where the README puts it, importable as `mymf`
    res = run_in_process(["model=mymf", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "debug=tiny",
                          "logger=none", "trainer.max_epochs=2"], tmp_path / "run")
    assert res["model"] == "MyMF" and len(res["valid_history"]) == 2 and 0.0 < res["test"]["recall@20"] <= 1.0


def test_a_misspelt_top_level_key_added_with_plus_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['seeed'\]: the root config "
                                          r"\(conf/config.yaml\) takes .*seed"):
        run_in_process(["+seeed=1", "debug=fast"], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_recgoat_spec_is_an_alias_of_the_published_method_and_the_variant_departs_from_it():
    published = OmegaConf.to_container(compose(["model=recgoat"]).model)
    assert OmegaConf.to_container(compose(["model=recgoat_spec"]).model) == published
    variant = OmegaConf.to_container(compose(["model=recgoat_mgcn"]).model)
    assert (published["id_encoder"]["n_layers"], variant["id_encoder"]["n_layers"]) == (3, 2)
    assert published["side_view"] is None and variant["side_view"]["_target_"] == "recgoat.nn.SideView"
    assert published["fusion"] is not None and variant["fusion"] is None
    assert published["user_branch"]["init_weight"] == 1.0 and variant["user_branch"] is None
    assert (published["modality_branches"]["knn_k"], published["modality_branches"]["encoder"]["heads"]) == (20, 8)
    assert published["alignment"]["cmcl"]["max_items"] is None and not published["alignment"]["detach_targets"]
