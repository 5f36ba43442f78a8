"""Equal-budget, valid-only leaderboard: every model tuned the same way, tested once, over seeds.

    python -m recgoat.leaderboard dataset=ml100k_mm models=[lightgcn,vbpr,freedom,mgcn,lgmrec,recgoat] \
        trials=8 seeds=3 jobs=2
    python -m recgoat.leaderboard dataset=ml100k_mm ...   # the same command again: continues where it stopped

Per model (a search space in ``conf/leaderboard/space/<model>.yaml``): ``trials`` Optuna trials that train with
the same budget and score valid only, then the best configuration retrained with seeds ``1..seeds`` and tested
once at its best valid epoch. Writes ``leaderboard.{md,csv,json,png}`` into ``out_dir`` (settings:
``conf/leaderboard.yaml``). ``jobs`` > 1 searches models in parallel processes; ``model_jobs`` > 1 also runs
each model's random start-up trials and its seed runs that many at a time (many small runs share one GPU); give
each run ``threads_per_job`` torch threads (e.g. ``jobs=2 threads_per_job=1`` on 2 cores, or ``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from recgoat.leaderboard.search import LeaderboardError, Plan, load_study
from recgoat.leaderboard.space import Space, load_space
from recgoat.leaderboard.table import markdown, write_table
from recgoat.training.run_folder import folder_lock
from recgoat.utils.config import conf_dir, threads_per_job
from recgoat.utils.io import atomic_write
from recgoat.utils.results import write_json_atomic

log = logging.getLogger("recgoat.leaderboard")

# what every run of one leaderboard folder shares; a restart that changes one of these is refused
SHARED = ("dataset", "data_fingerprint", "code_hash", "budget_overrides", "run", "monitor", "search_seed",
          "sampler", "sampler_seed", "defaults_first")


def data_fingerprint(dataset: str, run: list[str]) -> str:
    """The fingerprint of the data every run will load (the same overrides, without a model)."""
    from hydra.utils import instantiate

    from recgoat.utils.config import compose
    return instantiate(compose([f"dataset={dataset}", *run]).dataset).fingerprint()


def check_manifest(out: Path, manifest: dict) -> None:
    """Writes the folder's manifest, or checks a restart against the one there."""
    path = out / "manifest.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        differ = [k for k in SHARED if recorded.get(k) != manifest[k]]
        if differ:
            details = "; ".join(f"{k}: recorded {recorded.get(k)!r}, now {manifest[k]!r}" for k in differ)
            raise LeaderboardError(f"{path}: this command would mix runs of different {', '.join(differ)} with the "
                                   f"runs already in {out} ({details}); use a new out_dir")
        manifest = {**recorded, **manifest}
    write_json_atomic(path, manifest)


def copy_spaces(out: Path, spaces: list[Space]) -> None:
    """Each model's space beside its results (the table links them); a changed space is refused."""
    (out / "spaces").mkdir(exist_ok=True)
    for space in spaces:
        target = out / "spaces" / f"{space.name}.yaml"
        if target.is_file() and target.read_text() != space.text:
            raise LeaderboardError(f"{space.path} differs from the space {space.name} was searched over in {out} "
                                   f"({target}); trials of two spaces do not form one search: use a new out_dir")
        if not target.is_file():
            atomic_write(target, lambda tmp, s=space: Path(tmp).write_text(s.text))


def _work(plan: Plan, space: Space, spaces: list[Space], metrics: list[str]) -> None:
    from recgoat.leaderboard.search import run_model
    run_model(plan, space)
    write_table(plan, spaces, metrics)  # a partial table as each model ends


def leaderboard(cfg: DictConfig, dataset: str, dataset_overrides: list[str] = ()) -> dict:
    """Runs (or continues) the leaderboard ``cfg`` describes on the conf/dataset option ``dataset`` (with the
    command's ``dataset.*`` overrides, which every run gets); returns the table's JSON payload."""
    from recgoat.utils.provenance import code_version

    if cfg.trials < 1 or cfg.seeds < 1 or cfg.jobs < 1 or cfg.model_jobs < 1:
        raise ValueError(f"trials, seeds, jobs and model_jobs must be >= 1 (got trials={cfg.trials}, "
                         f"seeds={cfg.seeds}, jobs={cfg.jobs}, model_jobs={cfg.model_jobs})")
    if cfg.monitor not in cfg.metrics:
        raise ValueError(f"monitor={cfg.monitor} must be one of metrics={list(cfg.metrics)} (the table reports it)")
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    loss = next((str(o).split("=", 1)[1] for o in cfg.run if str(o).split("=", 1)[0].lstrip("+") == "loss"), None)
    spaces = [load_space(cfg.space_dir, m, loss=loss) for m in cfg.models]   # the objective's parameters join
    if len({s.name for s in spaces}) != len(spaces):
        raise ValueError(f"models lists a model twice: {list(cfg.models)}")
    run = [*dataset_overrides, *(str(o) for o in cfg.run)]
    budget = [f"trainer.max_epochs={cfg.budget.max_epochs}", f"callbacks.early_stopping.patience={cfg.budget.patience}",
              f"callbacks.early_stopping.warmup_epochs={cfg.budget.warmup_epochs}", f"monitor={cfg.monitor}"]
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with folder_lock(out, "this leaderboard command") as name_holder:   # one command per folder
        name_holder()
        code = code_version()
        manifest = {"dataset": dataset, "data_fingerprint": data_fingerprint(dataset, run),
                    "code_hash": code["code_hash"], "code": code, "budget_overrides": budget, "run": run,
                    "monitor": cfg.monitor, "search_seed": cfg.search_seed,
                    "sampler": OmegaConf.to_container(cfg.sampler), "sampler_seed": cfg.sampler_seed,
                    "defaults_first": cfg.defaults_first, "trials": cfg.trials, "seeds": cfg.seeds,
                    "models": list(cfg.models)}
        check_manifest(out, manifest)
        copy_spaces(out, spaces)
        plan = Plan(out_dir=out, dataset=dataset, common=(f"dataset={dataset}", *budget, *run),
                    monitor=cfg.monitor, trials=cfg.trials, seeds=cfg.seeds, search_seed=cfg.search_seed,
                    sampler=manifest["sampler"], sampler_seed=cfg.sampler_seed, keep_checkpoints=cfg.keep_checkpoints,
                    defaults_first=cfg.defaults_first,
                    jobs=cfg.jobs, model_jobs=cfg.model_jobs,
                    threads=threads_per_job(cfg.jobs * cfg.model_jobs, cfg.threads_per_job),
                    code_hash=code["code_hash"], data_fingerprint=manifest["data_fingerprint"],
                    total_runs={s.name: cfg.trials + cfg.seeds for s in spaces})
        metrics = [str(m) for m in cfg.metrics]
        for space in spaces:  # the SQLite schema and the studies, before worker processes race to create them
            load_study(plan, space)
        log.info("leaderboard in %s: %d models x (%d trials + %d seeds), %d job(s)", out, len(spaces), cfg.trials,
                 cfg.seeds, cfg.jobs)
        if cfg.jobs == 1:
            for space in spaces:
                _work(plan, space, spaces, metrics)
        else:
            from joblib import Parallel, delayed
            Parallel(n_jobs=cfg.jobs, backend="loky")(delayed(_work)(plan, s, spaces, metrics) for s in spaces)
        payload = write_table(plan, spaces, metrics)
    print("\n" + markdown(payload["rows"], metrics, plan, payload["manifest"]))
    print(f"written: {out / 'leaderboard.md'} (.csv, .json, .png)")
    return payload


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="leaderboard")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    hc = HydraConfig.get()
    leaderboard(cfg, hc.runtime.choices.dataset, dataset_key_overrides(list(hc.overrides.task)))


def dataset_key_overrides(overrides: list[str]) -> list[str]:
    """The command's overrides of keys of the dataset node (``dataset.path=...``), for every run."""
    return [o for o in overrides if o.lstrip("+~").startswith("dataset.")]


def check_list_overrides(argv: list[str]) -> None:
    """``run=[debug=tiny]``: Hydra's parser stops at the inner ``=`` with a message that does not say why; each
    override in the list must be quoted for Hydra (``'run=["debug=tiny"]'``)."""
    import re
    import sys
    for arg in argv:
        m = re.fullmatch(r"(\+?run)=\[(.*)\]", arg)
        if m and any("=" in item and not re.fullmatch(r"\s*(['\"]).*\1\s*", item) for item in m.group(2).split(",")):
            items = ", ".join(f'"{i.strip()}"' for i in m.group(2).split(","))
            sys.exit(f"{arg}: each recgoat.run override in the list needs quotes of its own, inside the shell's: "
                     f"'{m.group(1)}=[{items}]'")


if __name__ == "__main__":
    import sys
    check_list_overrides(sys.argv[1:])
    main()
