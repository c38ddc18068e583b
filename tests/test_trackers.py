"""train.log_to: TensorBoard, W&B and MLflow through accelerate's trackers, read back with each tool's own reader."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError

from train_helpers import overrides, sums_dataset

SAMPLES = {"step": 4, "split": "samples", "samples": [
    {"prompt": "What is 2 plus 3?", "answer": "2 plus 3 is 5.", "expected": "2 plus 3 is 5."},
    {"prompt": "What | is 1 plus 1?", "answer": "1 plus 1\nis 3.", "expected": "1 plus 1 is 2."},
]}


def _needs(package: str):
    """Skip where a tracker's package is missing (`make test` installs every one)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: pip install 'tunesmith[{package}]' (make test installs it)")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No tracker settings from the machine; W&B's own caches in the test's folder."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def sums(tmp_path):
    return sums_dataset(tmp_path / "data", n_train=12, n_val=4)


def _train(model_dir, sums, tmp_path, log_to: str, *, name="r", on_step=None, **train_keys):
    from tunesmith.train.finetune import finetune

    keys = dict(max_steps=4, eval_every=2, save_every=2) | train_keys
    sets = overrides(model_dir, *sums, tmp_path / "runs", **keys) + [f"train.log_to={log_to}", "serve.api_key=sekret"]
    return finetune(load_config(None, sets), name=name, on_step=on_step, show_progress=True)


def _same(logged: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """The same steps, and the same values to float32 precision (TensorBoard keeps float32)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)


def _metrics(run_dir: Path, split: str, key: str = "loss") -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["split"] == split]


# ---------------------------------------------------------------- config


def test_log_to_is_a_list_and_keeps_the_old_spellings(tmp_path):
    assert load_config().train.log_to == []
    assert load_config(None, ["train.log_to=tensorboard,wandb"]).train.log_to == ["tensorboard", "wandb"]
    assert load_config(None, ["train.log_to=[mlflow, wandb]"]).train.log_to == ["mlflow", "wandb"]
    for old in ("none", "tensorboard"):  # the values the key took before it was a list
        path = tmp_path / f"{old}.yaml"
        path.write_text(f"train:\n  log_to: {old}\n")
        assert load_config(path).train.log_to == ([] if old == "none" else ["tensorboard"])
    assert load_config(None, ["train.log_to=none"]).train.log_to == []


def test_log_to_refuses_an_unknown_tracker_naming_the_key_and_the_choices(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  log_to: [tensorbord, wandb, comet]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems == [f"{path}:2: train.log_to: unknown 'tensorbord', 'comet' (did you mean 'tensorboard'?): "
                                "choose from tensorboard, wandb, mlflow"]
    expected = "train.log_to: expected list of tensorboard | wandb | mlflow, got 3 (int)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, ["train.log_to=3"])


def test_a_missing_tracker_package_is_one_line_naming_its_extra(monkeypatch, tmp_path):
    from tunesmith.train.finetune import finetune

    for package in ("wandb", "mlflow"):  # as if not installed: find_spec gives None, import fails
        monkeypatch.setitem(sys.modules, package, None)
    cfg = load_config(None, [f"data.train={tmp_path / 'x.jsonl'}", "train.log_to=wandb,mlflow"])
    with pytest.raises(ConfigError) as e:
        finetune(cfg, show_progress=False)
    assert e.value.problems == ["train.log_to=wandb needs the wandb package: pip install 'tunesmith[wandb]'",
                                "train.log_to=mlflow needs the mlflow package: pip install 'tunesmith[mlflow]'"]


def test_hyperparameters_are_the_flat_config_without_secrets_plus_resolved_values():
    from tunesmith.train.trackers import hyperparameters

    cfg = load_config(None, ["serve.api_key=sekret", "train.log_to=tensorboard,mlflow", "train.lr=2e-4"])
    resolved = {"train.batch_size": {"value": 16, "reason": "800 examples / 50"}, "method.r": {"value": 8, "reason": "x"}}
    values = hyperparameters(cfg, {"resolved": resolved}, "my-run")
    assert values["run"] == "my-run" and values["train.lr"] == 2e-4 and values["data.train"] is None
    assert values["train.log_to"] == "tensorboard,mlflow" and values["serve.allowed_hosts"] == "localhost,127.0.0.1,::1"
    assert values["resolved.train.batch_size"] == 16 and values["resolved.method.r"] == 8
    assert "serve.api_key" not in values and "sekret" not in values.values()
    assert "resolved.train.batch_size" not in hyperparameters(cfg, {"resolved": "not a dict"}, "my-run")


# ---------------------------------------------------------------- readers, one per tool


def _tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in _tensorboard(folder).Scalars(tag)]


def _tb_hparams(folder: Path) -> dict:
    """The hyperparameters TensorBoard's HParams plugin shows (written to a subfolder of `folder`)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        content = _tensorboard(sub).PluginTagToContent("hparams")
        if "_hparams_/session_start_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                    for k, v in data.session_start_info.hparams.items()}
    raise AssertionError(f"no hyperparameters under {folder}")


def _wandb_run(run_dir: Path) -> Path:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and len(list(runs[0].glob("run-*.wandb"))) == 1, runs
    return runs[0]


def _wandb_records(folder: Path) -> list:
    """The records of an offline run's .wandb file, parsed with wandb's own protobuf definitions.

    wandb has no public reader for offline runs: the file is a 7-byte header (':W&B', magic,
    version) and then LevelDB-log chunks (crc32c, length, type) in 32 KiB blocks.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = next(folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 or pos + 7 + length > len(data):  # the tail wandb's writer has not finished (seen on CI)
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            try:
                records.append(wandb_internal_pb2.Record.FromString(pending))
            except DecodeError:
                if pos < len(data):  # only the last record may be half written; one inside the file is a bug
                    raise
            pending = b""
    return records


def _wandb_history(folder: Path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in _wandb_records(folder) if r.WhichOneof("record_type") == "history"]


def _wandb_series(folder: Path, key: str) -> list[tuple[int, float]]:
    return [(h["_step"], h[key]) for h in _wandb_history(folder) if key in h]


def _wandb_config(folder: Path) -> dict:
    return {u.key: json.loads(u.value_json) for r in _wandb_records(folder) if r.WhichOneof("record_type") == "config"
            for u in r.config.update}


def _wandb_exit_code(folder: Path) -> int:
    return next(r.exit.exit_code for r in _wandb_records(folder) if r.WhichOneof("record_type") == "exit")


def _mlflow_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tunesmith")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _mlflow_series(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def _nowhere(run_dir: Path, secret: bytes) -> None:
    """No file any tracker wrote holds `secret`."""
    assert [p for p in run_dir.rglob("*") if p.is_file() and secret in p.read_bytes()] == []


def _store(run_dir: Path) -> str:
    return (run_dir / "mlruns").resolve().as_uri()


@pytest.fixture
def file_store(monkeypatch):
    """MLflow 3 reads its file store only when allowed to (tunesmith allows it while it writes)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


# ---------------------------------------------------------------- training with each tracker


def test_tensorboard_gets_every_metric_and_the_hyperparameters(tiny_model_dir, sums, tmp_path, store_home, clean_env,
                                                               one_thread):
    _needs("tensorboard")
    run = _train(tiny_model_dir, sums, tmp_path, "tensorboard")
    folder = run.dir / "tensorboard"
    _same(_tb_scalars(folder, "train/loss"), _metrics(run.dir, "train"))
    _same(_tb_scalars(folder, "train/lr"), _metrics(run.dir, "train", "lr"))
    _same(_tb_scalars(folder, "validation/loss"), _metrics(run.dir, "validation"))
    hparams = _tb_hparams(folder)
    assert hparams["run"] == "r" and hparams["train.max_steps"] == 4 and hparams["train.log_to"] == "tensorboard"
    assert not any("api_key" in k for k in hparams)
    _nowhere(run.dir, b"sekret")


def test_wandb_offline_run_in_the_run_folder(tiny_model_dir, sums, tmp_path, store_home, clean_env, monkeypatch,
                                             capsys, one_thread):
    _needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user chose offline: no line from tunesmith about it
    run = _train(tiny_model_dir, sums, tmp_path, "wandb")
    folder = _wandb_run(run.dir)
    _same(_wandb_series(folder, "train/loss"), _metrics(run.dir, "train"))
    _same(_wandb_series(folder, "validation/loss"), _metrics(run.dir, "validation"))
    config = _wandb_config(folder)
    assert config["run"] == "r" and config["train.lr"] == 1e-3 and not any("api_key" in k for k in config)
    assert _wandb_exit_code(folder) == 0
    assert "wandb: offline run in" not in capsys.readouterr().err
    _nowhere(run.dir, b"sekret")


def test_mlflow_file_store_in_the_run_folder(tiny_model_dir, sums, tmp_path, store_home, clean_env, monkeypatch,
                                             one_thread):
    import os

    _needs("mlflow")
    run = _train(tiny_model_dir, sums, tmp_path, "mlflow")
    # mlflow's URI (and its file-store opt-in) were the run's only: the next run starts from the user's settings
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the reader
    [logged] = _mlflow_runs(_store(run.dir))
    assert logged.info.run_name == "r" and logged.info.status == "FINISHED"
    uri = _store(run.dir)
    _same(_mlflow_series(uri, logged.info.run_id, "train/loss"), _metrics(run.dir, "train"))
    _same(_mlflow_series(uri, logged.info.run_id, "validation/loss"), _metrics(run.dir, "validation"))
    params = logged.data.params
    assert params["run"] == "r" and float(params["train.lr"]) == 1e-3 and not any("api_key" in k for k in params)
    _nowhere(run.dir, b"sekret")


def test_all_three_at_once_default_settings_and_resume(tiny_model_dir, sums, tmp_path, store_home, clean_env, capsys,
                                                       monkeypatch, one_thread):
    """Nothing configured: W&B runs offline and says so in one line. A run killed after its step-2
    checkpoint, at step 3, is resumed from step 2: TensorBoard keeps each step once, as metrics.jsonl."""
    from tunesmith.runs.layout import RunPaths, foreign_entries
    from tunesmith.train.finetune import finetune

    for package in ("tensorboard", "wandb", "mlflow"):
        _needs(package)

    def kill_at_3(state, metrics):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_dir, sums, tmp_path, "tensorboard,wandb,mlflow", on_step=kill_at_3)
    [first] = (tmp_path / "runs" / "r" / "wandb").glob("offline-run-*")
    assert f"wandb: offline run in {first}; `wandb sync {first}` uploads it" in capsys.readouterr().err
    run = finetune(None, resume="r", show_progress=False)
    assert run.status == "completed" and run.steps == 4
    assert foreign_entries(RunPaths(run.dir)) == []  # `runs rm` still knows the folder as tunesmith's

    every = _metrics(run.dir, "train")
    assert [step for step, _ in every] == [1, 2, 3, 4]
    _same(_tb_scalars(run.dir / "tensorboard", "train/loss"), every)  # step 3 once: the killed run's is dropped
    _same(_tb_scalars(run.dir / "tensorboard", "validation/loss"), _metrics(run.dir, "validation"))
    killed, resumed = sorted((run.dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert (_wandb_exit_code(killed), _wandb_exit_code(resumed)) == (1, 0)
    assert [step for step, _ in _wandb_series(killed, "train/loss")] == [1, 2, 3]
    _same(_wandb_series(resumed, "train/loss"), every[2:])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the reader
    uri = _store(run.dir)
    before, after = _mlflow_runs(uri)
    assert [(r.info.run_name, r.info.status) for r in (before, after)] == [("r", "KILLED"), ("r", "FINISHED")]
    assert [step for step, _ in _mlflow_series(uri, before.info.run_id, "train/loss")] == [1, 2, 3]
    _same(_mlflow_series(uri, after.info.run_id, "train/loss"), every[2:])


# ---------------------------------------------------------------- MetricsSink: samples, odd values, failures


@pytest.fixture
def sink_run(tmp_path):
    """A run folder and a CPU Accelerator, for MetricsSink without a model."""
    from accelerate import Accelerator

    from tunesmith.runs.layout import RunPaths

    paths = RunPaths(tmp_path / "runs" / "sink")
    paths.dir.mkdir(parents=True)
    return paths, Accelerator(cpu=True)


def _write_rows(paths, acc, log_to: str, lines: list[str], *, manifest=None):
    from tunesmith.train import progress, trackers

    cfg = load_config(None, [f"train.log_to={log_to}"])
    with trackers.running(acc, paths, cfg, manifest or {}, 0, lines.append):
        sink = progress.MetricsSink(paths, enabled=True, accelerator=acc)
        sink.write([{"step": 1, "split": "train", "loss": "nan", "lr": 1e-3, "note": "text", "flag": True}])
        sink.write([{"step": 2, "split": "train", "loss": 2.5, "lr": 1e-3},
                    {"step": 2, "split": "validation", "loss": float("nan"), "accuracy": 0.25}])
        sink.write([SAMPLES])
    assert not acc.trackers  # finished and let go


def test_sink_tensorboard_samples_and_odd_values(sink_run, clean_env):
    _needs("tensorboard")
    from tensorboard.util import tensor_util

    paths, acc = sink_run
    _write_rows(paths, acc, "tensorboard", [])
    folder = paths.dir / "tensorboard"
    assert _tb_scalars(folder, "train/loss") == [(2, 2.5)]  # the string 'nan' is in metrics.jsonl only
    _same(_tb_scalars(folder, "train/lr"), [(1, 1e-3), (2, 1e-3)])
    assert _tb_scalars(folder, "validation/accuracy") == [(2, 0.25)]
    assert "train/flag" not in _tensorboard(folder).Tags()["scalars"]
    [text] = _tensorboard(folder).Tensors("samples/text_summary")
    table = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    assert text.step == 4 and table.splitlines()[:3] == [
        "| prompt | answer | expected |", "| --- | --- | --- |",
        "| What is 2 plus 3? | 2 plus 3 is 5. | 2 plus 3 is 5. |"]
    assert "| What \\| is 1 plus 1? | 1 plus 1<br>is 3. | 1 plus 1 is 2. |" in table
    assert [json.loads(line)["split"] for line in paths.metrics.read_text().splitlines()] == [
        "train", "train", "validation", "samples"]


def test_sink_wandb_samples_table(sink_run, clean_env):
    _needs("wandb")
    paths, acc = sink_run
    lines = []
    _write_rows(paths, acc, "wandb", lines)
    folder = _wandb_run(paths.dir)
    assert lines == [f"wandb: offline run in {folder}; `wandb sync {folder}` uploads it"]
    assert _wandb_series(folder, "train/loss") == [(2, 2.5)]
    assert _wandb_series(folder, "validation/accuracy") == [(2, 0.25)]
    [row] = [h for h in _wandb_history(folder) if "samples/_type" in h]
    assert row["_step"] == 4 and row["samples/_type"] == "table-file" and row["samples/nrows"] == 2
    table = json.loads((folder / "files" / row["samples/path"]).read_text())
    assert table["columns"] == ["prompt", "answer", "expected"]
    assert table["data"][1] == ["What | is 1 plus 1?", "1 plus 1\nis 3.", "1 plus 1 is 2."]


def test_sink_mlflow_samples_artifact_and_the_users_tracking_uri(sink_run, clean_env, file_store, monkeypatch,
                                                                 tmp_path):
    _needs("mlflow")
    import mlflow

    paths, acc = sink_run
    elsewhere = (tmp_path / "team-store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    _write_rows(paths, acc, "mlflow", [], manifest={"resolved": {"train.batch_size": 4}})
    assert not (paths.dir / "mlruns").exists()  # the user's store, not the run folder
    [logged] = _mlflow_runs(elsewhere)
    assert _mlflow_series(elsewhere, logged.info.run_id, "train/loss") == [(2, 2.5)]
    assert _mlflow_series(elsewhere, logged.info.run_id, "validation/accuracy") == [(2, 0.25)]
    assert logged.data.params["resolved.train.batch_size"] == "4" and logged.data.params["run"] == "sink"
    text = mlflow.artifacts.load_text(f"{logged.info.artifact_uri}/samples/step-4.md")
    assert text.splitlines()[0] == "| prompt | answer | expected |" and "2 plus 3 is 5." in text
    assert mlflow.get_tracking_uri() == elsewhere  # left as the user set it


def test_a_failed_or_interrupted_run_is_marked_so(sink_run, clean_env, file_store):
    for package in ("wandb", "mlflow"):
        _needs(package)
    from tunesmith.train import trackers

    paths, acc = sink_run
    cfg = load_config(None, ["train.log_to=wandb,mlflow"])
    with pytest.raises(RuntimeError), trackers.running(acc, paths, cfg, {}, 0, print):
        raise RuntimeError("the loop broke")
    with pytest.raises(KeyboardInterrupt), trackers.running(acc, paths, cfg, {}, 0, print):
        raise KeyboardInterrupt
    failed, killed = _mlflow_runs(_store(paths.dir))
    assert (failed.info.status, killed.info.status) == ("FAILED", "KILLED")
    assert [_wandb_exit_code(p) for p in sorted((paths.dir / "wandb").glob("offline-run-*"))] == [1, 1]
