"""``hydra/sweeper=space``: Optuna on the model's leaderboard search space, for ``python -m recgoat.run -m``.

    python -m recgoat.run -m hydra/sweeper=space model=recgoat dataset=ml100k_mm hydra.sweeper.n_trials=20

Each trial's parameters are drawn (Optuna's own API) from ``conf/leaderboard/space/<space>.yaml``, the one
search space per model that the leaderboard reads too, and the trial runs as a job of the multirun with
``test=false``: the value it returns is the valid metric (``monitor``), and the test split is never scored.
``optimization_results.yaml`` in the sweep folder names the best trial; score it on test by running its
overrides once more (or use the leaderboard, which does that with several seeds).
"""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SpaceSweeper(Sweeper):
    """Optuna's ask-and-tell loop over a search space file; ``n_jobs`` trials per batch go to the launcher together.

    Args:
        space: the space's name (a file ``<space_dir>/<space>.yaml``); ``None``: the chosen model's.
        space_dir: where the spaces are.
        n_trials: trials in all (a study stored in ``storage`` continues with its finished ones counted).
        n_jobs: trials launched together (the launcher runs them, in parallel with ``hydra/launcher=local_parallel``).
        direction: ``maximize`` (the metrics are accuracies).
        study_name: the Optuna study's name; ``None``: the space's.
        storage: an Optuna storage URL (``sqlite:///study.db``) to continue a study, or ``null`` (in memory).
        sampler: an Optuna sampler (a ``_target_`` node, which Hydra instantiates).
    """

    def __init__(self, space: str | None, space_dir: str, n_trials: int, n_jobs: int, direction: str,
                 study_name: str | None, storage: str | None, sampler):
        self.space_name, self.space_dir = space, space_dir
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.sampler = sampler
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.space_name = self.space_name or config.hydra.runtime.choices.model
        self.study_name = self.study_name or self.space_name
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from recgoat.leaderboard.space import as_overrides, load_space, suggest

        loss = self.config.hydra.runtime.choices.get("loss")   # the objective's own parameters join the space
        space = load_space(self.space_dir, self.space_name, loss=loss)
        fixed = self._fixed(arguments, space)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=self.sampler, load_if_exists=True)
        done = len([t for t in study.trials if t.state.is_finished()])
        sweep_dir = Path(self.config.hydra.sweep.dir)
        used = sorted(p.name for p in sweep_dir.glob("*") if p.name.isdigit()) if sweep_dir.is_dir() else []
        if used and not study.trials:
            raise ValueError(f"hydra.sweep.dir={sweep_dir} holds the jobs of another sweep ({len(used)}); give this "
                             f"sweep another folder, or keep its study (hydra.sweeper.storage=sqlite:///<file>) to "
                             f"continue it there")
        self.job_idx = len(study.trials)   # a continued study's jobs go to new folders
        log.info("Optuna on %s (%d parameters), %d of %d trials done; fixed: %s", space.path, len(space.params),
                 done, self.n_trials, fixed)
        while done < self.n_trials:
            trials = [study.ask() for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [(*fixed, *as_overrides(suggest(t, space.params))) for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    study.tell(trial, float(ret.return_value))
                except Exception as e:   # a failed job: the trial fails, the study goes on
                    log.warning("trial %d failed: %s", trial.number, e)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            done += len(trials)
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            raise RuntimeError(f"every trial of the sweep in {sweep_dir} failed; their logs are in its job folders")
        best = study.best_trial
        results = {"space": str(space.path), "monitor": self.config.monitor, "direction": self.direction,
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params,
                   "best_overrides": [*(o for o in fixed if o != "test=false"), *as_overrides(best.params)]}
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
        log.info("best trial %d: valid %s %.4f with %s", best.number, self.config.monitor, best.value, best.params)

    @staticmethod
    def _fixed(arguments: list[str], space) -> list[str]:
        """The command line's overrides, the space's own run overrides where the command line does not set their
        key, and ``test=false``; a command-line sweep (``a=1,2``) is refused (the space says what varies)."""
        parsed = OverridesParser.create().parse_overrides(arguments)
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        if swept:
            raise ValueError(f"hydra/sweeper=space draws every value from its space; these overrides sweep: {swept} "
                             f"(give one value each, or run one sweep per value)")
        keys = {o.get_key_element().lstrip("+~") for o in parsed}
        tuned = sorted(keys & set(space.params))
        if tuned:
            raise ValueError(f"{tuned}: set on the command line but tuned by {space.path}")
        own = [o for o in space.run if o.split("=", 1)[0].lstrip("+~") not in keys]   # loss= is the command's
        return [*own, *arguments, *([] if "test" in keys else ["test=false"])]
