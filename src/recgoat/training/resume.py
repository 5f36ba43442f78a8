"""``python -m recgoat.run resume=<run dir>``: continue a killed run in its own folder, from its own config.

Everything is checked before anything in the folder is touched: the run's saved config and last checkpoint
must be readable, the command line may only change what cannot change the run's result, and the data must
have the fingerprint the checkpoint recorded. Then the run continues where ``last.ckpt`` left it; its
``metrics.csv`` keeps every epoch up to the checkpoint and continues, and the record of the resume (its config and
command) goes to ``.hydra/<time>/`` beside the original ``.hydra/`` files, once the resume is accepted: a refused
one leaves the folder byte-identical.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from recgoat.utils.io import atomic_write

# command-line overrides that a resume accepts: they change how long or how visibly the run goes on, not what
# it computes; dataset.path only says where the data is now (it must have the fingerprint the checkpoint recorded)
RESUME_SAFE_OVERRIDES = ("resume", "trainer.max_epochs", "trainer.enable_progress_bar", "dataset.path")


class ResumeError(ValueError):
    """A resume that cannot continue the run as it was started."""


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def refuse_other_run_dir(hydra_overrides: list[str]) -> None:
    """``resume=`` continues in the run's own folder: another ``hydra.run.dir`` would fork it (a new folder whose
    ``metrics.csv`` starts mid-way)."""
    moved = [o for o in hydra_overrides if o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir"]
    if moved:
        raise ResumeError(f"resume= continues the run in its own folder; {moved} would fork it into another one. To "
                          f"continue a copy, copy the folder and resume the copy (resume=<copy>)")


def write_resume_record(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> Path:
    """The accepted resume's config and command, in a new ``.hydra/<time>/`` beside the run's original record."""
    from recgoat.utils.config import record_dir

    folder = record_dir(run_dir)
    folder.mkdir(parents=True)
    atomic_write(folder / "config.yaml", lambda tmp: OmegaConf.save(cfg, tmp))
    atomic_write(folder / "overrides.yaml", lambda tmp: OmegaConf.save(OmegaConf.create(list(overrides)), tmp))
    return folder


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's own saved config, with the safe ``overrides`` of this command applied and ``ckpt_path`` set to
    its last checkpoint; refuses anything else with a message saying why."""
    run_dir = Path(cfg.resume).resolve()
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        raise ResumeError(f"resume={cfg.resume}: {saved_path} not found; resume= takes the folder a run wrote "
                          f"(logs/train/runs/<time>, or the hydra.run.dir it was given)")
    if (run_dir / "results.json").exists():
        raise ResumeError(f"resume={cfg.resume}: the run has finished ({run_dir / 'results.json'}); nothing to resume")
    ckpt = last_checkpoint(run_dir)
    if not ckpt.is_file():
        raise ResumeError(f"resume={cfg.resume}: {ckpt} not found: the run was stopped before its first "
                          f"validation; start it again")
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    unsafe = [o for o, k in zip(overrides, keys, strict=True) if k not in RESUME_SAFE_OVERRIDES]
    if unsafe:
        raise ResumeError(f"resume= continues the run with its own config ({saved_path}); these overrides would "
                          f"change it and are refused: {unsafe} (a resume accepts {list(RESUME_SAFE_OVERRIDES)})")
    saved = OmegaConf.load(saved_path)
    with open_dict(saved):
        for key in keys:
            if key != "resume":
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        saved.resume = str(run_dir)
        saved.ckpt_path = str(ckpt)
    return saved


def saved_model_choice(run_dir: str | Path) -> str | None:
    """The model group's choice the run in ``run_dir`` was started with (its ``.hydra/hydra.yaml``), if recorded."""
    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.model")


def check_resume_data(ckpt_path: str | Path, dataset) -> int:
    """The epoch of the checkpoint, after checking that it is readable and that ``dataset`` is the data it was
    trained on (the one read of the checkpoint before Lightning restores it)."""
    from recgoat.training.checkpoint import data_mismatch, read_checkpoint, read_metadata

    ckpt = read_checkpoint(ckpt_path)
    mismatch = data_mismatch(ckpt_path, read_metadata(ckpt)["dataset"], dataset)
    if mismatch:
        raise ResumeError(f"{mismatch}: the data changed since the run started, so it cannot be continued")
    return int(ckpt["epoch"])


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop the rows of ``metrics.csv`` logged after ``last_epoch`` (the resumed run logs those epochs again)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("epoch") or int(float(r["epoch"])) <= last_epoch]
    if len(kept) == len(rows):
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write(path, lambda tmp: Path(tmp).write_text(out.getvalue()))


def refuse_used_run_dir(run_dir: Path) -> None:
    """A new run never writes into a folder that holds another run's checkpoints or metrics."""
    used = [p for p in (run_dir / "checkpoints", run_dir / "csv" / "metrics.csv", run_dir / "results.json")
            if p.is_file() or p.is_dir() and any(p.iterdir())]
    if used:
        raise ResumeError(f"{run_dir} already holds a run ({', '.join(str(p) for p in used)}); resume it with "
                          f"python -m recgoat.run resume={run_dir}, or give this run another folder "
                          f"(hydra.run.dir=...)")
