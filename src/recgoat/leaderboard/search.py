"""One model's part of a leaderboard: an Optuna search on valid, then the best configuration over seeds.

Layout of a leaderboard folder::

    manifest.json            what every run must share (code, data, budget); checked on every restart
    study.db                 the Optuna studies (SQLite), one per model
    spaces/<model>.yaml      the search space each model was searched over
    <model>/search/trial_NNN/   search trials: valid only (``test=false``)
    <model>/best/<id>/seed_S/   the best configuration, retrained and tested once per seed
    leaderboard.{md,csv,json,png}

Resuming: completed trials live in the study; a trial found RUNNING at start-up was killed with the last
command, so it is marked failed (``killed``) and its parameters are asked again; a seed run with a
``results.json`` is reused after checking that its code, config and data are the ones of this leaderboard,
one without is started again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from recgoat.leaderboard.space import Space, as_overrides, load_space, suggest

log = logging.getLogger("recgoat.leaderboard")


class LeaderboardError(RuntimeError):
    """A leaderboard that cannot continue without mixing runs of different code, data or budget."""


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to run one model's part (plain values: it is sent to worker processes)."""
    out_dir: Path
    dataset: str
    common: tuple[str, ...]          # overrides every run gets: dataset, budget, the `run` list
    monitor: str
    trials: int
    seeds: int
    search_seed: int
    sampler: dict                    # a partial _target_ node, given seed=
    sampler_seed: int
    keep_checkpoints: bool
    defaults_first: bool             # trial 0 of every model: its config's own values of the space's parameters
    jobs: int
    threads: int | None
    model_jobs: int                  # runs of one model at once (its start-up trials, its seed runs)
    code_hash: str
    data_fingerprint: str
    total_runs: dict = field(default_factory=dict)  # model -> trials + seeds, for the progress line

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.out_dir / 'study.db'}"


def storage(plan: Plan):
    import optuna
    # several processes may write (jobs > 1): wait for SQLite's lock instead of failing
    return optuna.storages.RDBStorage(plan.storage_url, engine_kwargs={"connect_args": {"timeout": 120}})


def load_study(plan: Plan, space: Space):
    import optuna
    study = optuna.create_study(study_name=space.name, storage=storage(plan), direction="maximize",
                                load_if_exists=True)
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None:
        study.set_user_attr("space_sha256", space.sha256)
        study.set_user_attr("space", space.text)
    elif recorded != space.sha256:
        raise LeaderboardError(f"{space.path} changed since {space.name}'s search started in {plan.out_dir} (the "
                               f"space it was searched over: {plan.out_dir / 'spaces' / (space.name + '.yaml')}); "
                               f"trials of two spaces do not form one search: use a new out_dir")
    return study


def counted_trials(study) -> list:
    """The trials that spent budget: completed ones and ones that raised (not ones killed with a command)."""
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not t.user_attrs.get("killed"))]


def recover_killed(plan: Plan, study, space: Space) -> None:
    """Trials left RUNNING by a killed command: marked failed (``killed``) and their parameters asked again."""
    import optuna
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "killed", True)
        study.tell(t.number, state=TrialState.FAIL)
        if t.params and len(t.params) == len(space.params):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(t.params)  # the next ask returns these parameters
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(trial_dir(plan, space, t.number))
        log.info("%s: trial %d was killed with the last command; asked again", space.name, t.number)


def default_values(plan: Plan, space: Space) -> dict:
    """The values the model's config gives the space's parameters (its first trial with ``defaults_first``)."""
    from omegaconf import OmegaConf

    from recgoat.utils.config import compose
    cfg = compose([*space.run, *plan.common])
    values = {}
    for key, spec in space.params.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        inside = (value in spec["choices"] if spec["type"] == "categorical"
                  else value is not None and float(spec["low"]) <= value <= float(spec["high"]))
        if not inside:
            raise LeaderboardError(f"{space.path}: {space.name}'s config sets {key}={value!r}, outside its search "
                                   f"space {spec}; widen the space or set defaults_first=false")
        values[key] = value
    return values


def trial_dir(plan: Plan, space: Space, number: int) -> Path:
    return plan.out_dir / space.name / "search" / f"trial_{number:03d}"


def run_overrides(plan: Plan, space: Space, params: list[str], seed: int, test: bool, out: Path) -> list[str]:
    return [*space.run, *plan.common, *params, f"seed={seed}", f"test={'true' if test else 'false'}",
            f"name={space.name}", f"paths.output_dir={out}"]


def run_one(overrides: list[str], out: Path) -> dict:
    """``recgoat.run <overrides>`` in this process, into ``out``; its log and printed table go to
    ``out/run.log`` (warnings too). Returns its results with the wall and CPU seconds it took."""
    from recgoat.run import train
    from recgoat.utils.config import compose_run

    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    quiet = [logging.getLogger(n) for n in ("recgoat", "pytorch_lightning", "lightning.pytorch")]
    saved = [(lg.propagate, lg.level) for lg in quiet]
    quiet[0].addHandler(handler)
    for lg in quiet:
        lg.propagate = False
    quiet[0].setLevel(logging.INFO)  # the epoch lines, also in a worker process (its root logger is unset)
    quiet[1].setLevel(logging.WARNING)
    quiet[2].setLevel(logging.WARNING)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        with open(out / "run.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            cfg, model_name = compose_run(overrides)
            results = train(cfg, output_dir=out, model_name=model_name)
    finally:
        quiet[0].removeHandler(handler)
        handler.close()
        for lg, (propagate, level) in zip(quiet, saved, strict=True):
            lg.propagate, lg.level = propagate, level
    return {**results, "cost": {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}}


def expected_hash(overrides: list[str]) -> str:
    """The config hash a run started with ``overrides`` records (see ``recgoat.utils.provenance``)."""
    from omegaconf import OmegaConf

    from recgoat.utils.config import apply_experiment, compose_run
    from recgoat.utils.provenance import config_hash
    cfg, model_name = compose_run(overrides)
    apply_experiment(cfg, model_name)
    return config_hash(OmegaConf.to_container(cfg, resolve=True))


def check_reused(plan: Plan, path: Path, results: dict, overrides: list[str]) -> None:
    """A finished run is reused only if it is this leaderboard's run: same code, data and config."""
    prov = results.get("provenance") or {}
    checks = (("code", prov.get("code_hash"), plan.code_hash),
              ("data", prov.get("data_fingerprint"), plan.data_fingerprint),
              ("config", prov.get("config_hash"), expected_hash(overrides)))
    for what, recorded, now in checks:
        if recorded != now:
            raise LeaderboardError(f"{path}: this finished run's {what} differs from this leaderboard's (recorded "
                                   f"{str(recorded)[:12]}, now {str(now)[:12]}); it cannot be reused, and runs of "
                                   f"different {what} are not mixed: use a new out_dir, or delete {path.parent}")


def best_trial(study):
    from optuna.trial import TrialState
    done = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    # the highest valid metric; ties go to the earlier trial
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def best_dir(plan: Plan, space: Space, overrides: list[str]) -> Path:
    ident = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:10]
    return plan.out_dir / space.name / "best" / ident


def trial_seconds(t) -> tuple[float, float | None]:
    cost = t.user_attrs.get("cost")
    if cost:
        return cost["wall_s"], cost["cpu_s"]
    if t.datetime_start and t.datetime_complete:  # a trial that raised: its wall time
        return (t.datetime_complete - t.datetime_start).total_seconds(), None
    return 0.0, None


def seed_runs(plan: Plan, space: Space, study) -> list[dict]:
    best = best_trial(study)
    if best is None or len(counted_trials(study)) < plan.trials:
        return []  # the search has not ended: no seed run exists, and none is read
    folder = best_dir(plan, space, best.user_attrs["overrides"])
    runs = []
    for seed in range(1, plan.seeds + 1):
        path = folder / f"seed_{seed}" / "results.json"
        if path.is_file():
            results = json.loads(path.read_text())
            cost_path = path.with_name("cost.json")
            cost = (json.loads(cost_path.read_text()) if cost_path.is_file()
                    else {"wall_s": results["timings"]["load_s"] + results["timings"]["fit_s"], "cpu_s": None})
            runs.append({"seed": seed, "path": str(path.relative_to(plan.out_dir)), "results": results, "cost": cost})
    return runs


def spent(plan: Plan, model: str) -> tuple[int, float]:
    """(runs finished, their wall seconds) of one model: its counted trials and seed runs."""
    import optuna

    try:
        study = optuna.load_study(study_name=model, storage=plan.storage_url)
    except KeyError:  # not started
        return 0, 0.0
    trials = counted_trials(study)
    seconds = sum(trial_seconds(t)[0] for t in trials)
    space = load_space(plan.out_dir / "spaces", model)
    seeds = seed_runs(plan, space, study)
    return len(trials) + len(seeds), seconds + sum(r["cost"]["wall_s"] for r in seeds)


def progress(plan: Plan, space: Space, what: str, cost: dict | None) -> None:
    """One line: this model's step, and how far the whole leaderboard is (read from the study and the run
    folders, so it is right with several worker processes and after a restart)."""
    status = {m: spent(plan, m) for m in plan.total_runs}
    done = sum(n for n, _ in status.values())
    seconds = sum(s for _, s in status.values())
    rates = [s / n for n, s in status.values() if n]
    left = ""
    if rates:  # a model without a finished run yet is costed at the mean of the others' seconds per run
        mean = sum(rates) / len(rates)
        remaining = sum((total - status[m][0]) * (status[m][1] / status[m][0] if status[m][0] else mean)
                        for m, total in plan.total_runs.items())
        left = f", about {remaining / 60 / (plan.jobs * plan.model_jobs):.0f} min left"
    took = f" in {cost['wall_s']:.0f}s" if cost else ""
    line = (f"[leaderboard] {space.name}: {what}{took} | {done}/{sum(plan.total_runs.values())} runs done, "
            f"{seconds / 60:.1f} min of runs{left}")
    print(line, flush=True)
    with open(plan.out_dir / "progress.log", "a") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


def _run_in_worker(overrides: list[str], out: Path, threads: int | None) -> dict:
    """:func:`run_one` in a worker process of its own (``model_jobs`` > 1)."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    return run_one(overrides, out)


@contextlib.contextmanager
def run_pool(plan: Plan):
    """Runs one model's independent runs: in this process (``model_jobs=1``), or ``model_jobs`` at a time in
    worker processes (fresh interpreters: safe with CUDA)."""
    if plan.model_jobs == 1:
        yield None
        return
    # loky's executor: fresh interpreters, and it also starts them from inside a joblib (loky) worker (jobs > 1),
    # where the standard library's spawn context fails
    from joblib.externals.loky.process_executor import ProcessPoolExecutor
    with ProcessPoolExecutor(plan.model_jobs) as pool:
        yield pool


def run_many(pool, jobs: list[tuple[list[str], Path]], threads: int | None):
    """Yields ``(index, results or the exception it raised)`` of each ``(overrides, out)`` as it ends."""
    if pool is None:
        for i, (overrides, out) in enumerate(jobs):
            try:
                yield i, run_one(overrides, out)
            except Exception as e:  # noqa: BLE001 - handed to the caller, which records it
                yield i, e
        return
    from concurrent.futures import BrokenExecutor, as_completed
    futures = {pool.submit(_run_in_worker, overrides, out, threads): i for i, (overrides, out) in enumerate(jobs)}
    for future in as_completed(futures):
        error = future.exception()
        if isinstance(error, BrokenExecutor):  # a worker died (not the run): no budget was spent, stop here
            raise LeaderboardError(f"a worker process of model_jobs={len(futures)} died: {error}") from error
        yield futures[future], error if error is not None else future.result()


def independent_trials(plan: Plan, n_done: int) -> int:
    """How many of the next trials can run at once without changing what they ask: the sampler's random
    start-up trials (each asked by a sampler seeded by its position alone), never past ``trials``."""
    startup = int(plan.sampler.get("n_startup_trials", 0))
    return max(1, min(plan.model_jobs, plan.trials - n_done, startup - n_done))


def ask_trial(plan: Plan, study, space: Space, position: int):
    """Asks the trial at ``position`` (counted trials before it) with a sampler seeded by that position, so
    the same history asks the same trial; returns ``(trial, overrides, run folder)``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    study.sampler = instantiate(OmegaConf.create(plan.sampler))(seed=plan.sampler_seed + position)
    trial = study.ask()
    values = suggest(trial, space.params)
    killed = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("killed")
              and t.params == values]
    if killed and "fixed_params" in trial.system_attrs:  # an enqueued retry
        trial.set_user_attr("retry_of", killed[-1])
    params = as_overrides(values)
    out = trial_dir(plan, space, trial.number)
    shutil.rmtree(out, ignore_errors=True)  # a number is never reused; a leftover would be a killed trial's
    trial.set_user_attr("overrides", params)
    trial.set_user_attr("run_dir", str(out.relative_to(plan.out_dir)))
    return trial, params, out


def run_model(plan: Plan, space: Space) -> None:
    """Search ``space`` to ``plan.trials`` counted trials, then retrain the best with seeds 1..``plan.seeds``.
    With ``model_jobs`` > 1 the random start-up trials, then the seed runs, run that many at a time; they ask
    and give what one at a time would."""
    import optuna

    if plan.threads:
        import torch
        torch.set_num_threads(plan.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # SQLite schema set-up, once per storage
    study = load_study(plan, space)
    recover_killed(plan, study, space)
    if plan.defaults_first and not study.get_trials(deepcopy=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial(default_values(plan, space))
    with run_pool(plan) as pool:
        while (n_done := len(counted_trials(study))) < plan.trials:
            asked = [ask_trial(plan, study, space, n_done + j) for j in range(independent_trials(plan, n_done))]
            jobs = [(run_overrides(plan, space, params, plan.search_seed, False, out), out) for _, params, out in asked]
            for i, results in run_many(pool, jobs, plan.threads):
                trial, _, out = asked[i]
                if isinstance(results, Exception):  # the budget was spent; the next trial goes on (the table counts it)
                    log.error("%s: trial %d raised", space.name, trial.number, exc_info=results)
                    trial.set_user_attr("error", f"{type(results).__name__}: {results}"[:2000])
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    progress(plan, space, f"trial {trial.number} failed ({type(results).__name__})", None)
                    continue
                assert results["test"] is None, "a search trial scored the test split"
                trial.set_user_attr("cost", results["cost"])
                trial.set_user_attr("best_epoch", results["best_epoch"])
                trial.set_user_attr("epochs", results["timings"]["epochs"])
                trial.set_user_attr("valid", results["valid"])
                study.tell(trial, results["valid"][plan.monitor])
                if not plan.keep_checkpoints:
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)
                best = best_trial(study)
                progress(plan, space, f"trial {len(counted_trials(study))}/{plan.trials} valid {plan.monitor} "
                                      f"{results['valid'][plan.monitor]:.4f} (best {best.value:.4f})", results["cost"])

        best = best_trial(study)
        if best is None:
            progress(plan, space, "no trial completed; no seed runs", None)
            return
        params = best.user_attrs["overrides"]
        folder = best_dir(plan, space, params)
        seeds, jobs = [], []
        for seed in range(1, plan.seeds + 1):
            out = folder / f"seed_{seed}"
            overrides = run_overrides(plan, space, params, seed, True, out)
            if (out / "results.json").is_file():
                check_reused(plan, out / "results.json", json.loads((out / "results.json").read_text()), overrides)
                continue
            shutil.rmtree(out, ignore_errors=True)  # killed before its results: started again
            seeds.append(seed)
            jobs.append((overrides, out))
        for i, results in run_many(pool, jobs, plan.threads):
            if isinstance(results, Exception):
                raise results
            (jobs[i][1] / "cost.json").write_text(json.dumps(results["cost"]) + "\n")
            progress(plan, space, f"seed {seeds[i]}/{plan.seeds} test {plan.monitor} "
                                  f"{results['test'][plan.monitor]:.4f}", results["cost"])
