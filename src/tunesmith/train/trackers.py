"""The trackers of `train.log_to` (TensorBoard, W&B, MLflow) through accelerate's tracker API.

Each writes inside the run folder unless the user configured otherwise:
    tensorboard  <run>/tensorboard; a resumed run appends there, and what was logged after its
                 checkpoint is dropped (as metrics.jsonl drops it)
    wandb        <run>/wandb (or $WANDB_DIR), project "tunesmith" (or $WANDB_PROJECT); offline,
                 with one line saying how to upload it, unless WANDB_MODE or WANDB_API_KEY is set
    mlflow       $MLFLOW_TRACKING_URI, else a file store in <run>/mlruns; experiment "tunesmith"
                 (or $MLFLOW_EXPERIMENT_NAME)
Each tracker's run is named after tunesmith's run. Only the main process logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Callable, Iterator

from tunesmith.config import Config, secret_keys, to_dict
from tunesmith.runs.layout import RunPaths

PROJECT = "tunesmith"  # the W&B project and the MLflow experiment


def missing(names: list[str]) -> list[str]:
    """One line per tracker in `names` whose package is not installed, naming the extra that installs it."""
    return [f"train.log_to={name} needs the {name} package: pip install 'tunesmith[{name}]'"
            for name in names if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def running(acc, paths: RunPaths, config: Config, manifest: dict, step: int,
            say: Callable[[str], None]) -> Iterator[None]:
    """The trackers of `config.train.log_to` started on `acc` for the block (main process only), the
    hyperparameters logged; finished when it ends, however it ends. `step`: where a resumed run goes on."""
    names = list(dict.fromkeys(config.train.log_to))
    if not names or not acc.is_main_process:
        yield
        return
    restore = _point_mlflow(paths) if "mlflow" in names else None
    outcome = None
    try:
        # The run folder is known only once the Accelerator exists (phase 1 broadcasts the run name
        # through it), so the trackers are handed to it here; accelerate reads log_with in init_trackers.
        acc.log_with = [_tracker(name, paths, step) for name in names]
        acc.init_trackers(PROJECT, config=hyperparameters(config, manifest, paths.name))
        if "wandb" in names and not _wandb_configured():
            folder = acc.get_tracker("wandb", unwrap=True).settings.sync_dir
            say(f"wandb: offline run in {folder}; `wandb sync {folder}` uploads it")
        yield
    except KeyboardInterrupt:
        outcome = "killed"
        raise
    except BaseException:
        outcome = "failed"
        raise
    finally:
        _finish(acc, outcome, say)
        if restore is not None:
            restore()


def log(acc, rows: list[dict]) -> None:
    """Each row's numeric values as '<split>/<key>' at its step; a samples row as a table of answers.

    Other values (a loss written as the string 'nan', a name) are in metrics.jsonl only.
    """
    if not acc.trackers:
        return
    for row in rows:
        if row.get("split") == "samples":
            _log_samples(acc, row["step"], row.get("samples") or [])
            continue
        values = {f"{row['split']}/{key}": value for key, value in row.items()
                  if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if values:
            acc.log(values, step=row["step"])


def hyperparameters(config: Config, manifest: dict, run_name: str) -> dict[str, Any]:
    """The flattened config ('train.lr': 0.0002; lists joined with ','; secret keys left out), the
    run's name, and which keys `auto` chose (the manifest's "resolved": {key: {"value", "reason"}}),
    as 'resolved.<key>': value (the config given here has the chosen values already)."""
    values = {"run": run_name, **_flat(to_dict(config))}
    resolved = manifest.get("resolved")
    if isinstance(resolved, dict):
        values.update({f"resolved.{key}": choice.get("value") if isinstance(choice, dict) else choice
                       for key, choice in resolved.items()})
    secrets = {f"{section}.{key}" for section, key in secret_keys()}
    return {k: v for k, v in values.items() if k.removeprefix("resolved.") not in secrets}


def samples_markdown(samples: list[dict]) -> str:
    """Sample answers as a markdown table, one column per key (prompt, answer, expected, ...)."""
    columns, rows = _table(samples)
    cells = [[str(v).replace("|", "\\|").replace("\n", "<br>") for v in row] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


# ---------------------------------------------------------------- internals


def _tracker(name: str, paths: RunPaths, step: int):
    """accelerate's tracker `name`, writing where the module docstring says."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":  # <logging_dir>/<run_name>; purge_step drops what a killed run logged past its checkpoint
        return TensorBoardTracker(paths.tensorboard.name, str(paths.dir), purge_step=step + 1 if step else None)
    if name == "wandb":
        return WandBTracker(os.environ.get("WANDB_PROJECT") or PROJECT, **_wandb_settings(paths))
    return MLflowTracker(PROJECT, run_name=paths.name)


def _wandb_configured() -> bool:
    """Has the user said how W&B should run? Otherwise it runs offline: no account, no network."""
    return bool(os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"))


def _wandb_settings(paths: RunPaths) -> dict[str, Any]:
    """wandb.init arguments: the run's name, its folder in the run folder, offline unless configured."""
    kwargs: dict[str, Any] = {"name": paths.name}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(paths.dir)
    if not _wandb_configured():  # its own console lines say what our one line says
        kwargs.update(mode="offline", settings={"silent": True})
    return kwargs


def _point_mlflow(paths: RunPaths) -> Callable[[], None]:
    """Point mlflow at the user's MLFLOW_TRACKING_URI, else at a file store in <run>/mlruns; returns what
    undoes it. mlflow keeps the URI process-wide and in the environment, where the next run would take
    it for the user's."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return lambda: None
    import mlflow

    # MLflow 3 keeps its file store (no server, no database) behind this opt-out; its SQLite store
    # would need SQLAlchemy and spend seconds creating its tables for every run.
    opted_in = "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((paths.dir / "mlruns").resolve().as_uri())

    def undo() -> None:
        mlflow.set_tracking_uri(None)
        if opted_in:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)

    return undo


def _finish(acc, outcome: str | None, say: Callable[[str], None]) -> None:
    """Finish every tracker; W&B and MLflow record a run that failed or was interrupted as such.

    Not `accelerator.end_training()`: that also destroys the process group, which the caller of
    finetune() may still use (it did not create it).
    """
    for tracker in acc.trackers:
        try:
            if outcome and tracker.name == "wandb":
                tracker.tracker.finish(exit_code=1)
            elif outcome and tracker.name == "mlflow":
                import mlflow

                mlflow.end_run(status=outcome.upper())  # FAILED | KILLED
            else:
                tracker.finish()
        except Exception as e:  # a tracker that cannot close must not hide how training ended
            say(f"{tracker.name}: could not finish its run ({type(e).__name__}: {e})")
    acc.trackers.clear()
    acc.log_with = []


def _log_samples(acc, step: int, samples: list[dict]) -> None:
    names = {tracker.name for tracker in acc.trackers}
    if "tensorboard" in names:
        writer = acc.get_tracker("tensorboard", unwrap=True)
        writer.add_text("samples", samples_markdown(samples), global_step=step)
        writer.flush()
    if "wandb" in names:
        columns, rows = _table(samples)
        acc.get_tracker("wandb").log_table("samples", columns=columns, data=rows, step=step)
    if "mlflow" in names:
        import mlflow

        mlflow.log_text(samples_markdown(samples), f"samples/step-{step}.md")


def _table(samples: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Columns (every key, in order of first use) and rows of text."""
    columns = list(dict.fromkeys(key for sample in samples for key in sample))
    return columns, [[str(sample.get(c, "")) for c in columns] for sample in samples]


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; a list becomes 'a,b' (every tracker takes scalars)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = ",".join(map(str, value))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
