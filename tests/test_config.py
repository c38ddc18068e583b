"""Config: defaults < YAML < --set, every error reported at once, messages pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import Config, describe_keys, load_config, resolve_config
from tunesmith.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
model: smollm2-135m-instruct
data:
  train: examples/support-faq/faq.jsonl
  validation: null
  system: "You answer customers' questions about building permits."
method:
  name: lora
  r: 16
  alpha: 32
train:
  epochs: 2
  max_steps: null
  lr: 2.0e-4
  batch_size: 8
  eval_every: 50
  save_every: 100
  early_stopping_patience: 3
  seed: 42
output_dir: runs
"""


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Run from a folder that is neither the repository nor the config's folder."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def write(folder, text, name="c.yaml"):
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_defaults_without_file(elsewhere):
    cfg = load_config()
    assert cfg == Config(output_dir=str(elsewhere / "runs"))  # paths come out absolute
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.method.name == "lora" and cfg.train.early_stopping_patience == 3


def test_user_contract_keys_load(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data.train == str(tmp_path / "examples" / "support-faq" / "faq.jsonl")
    assert cfg.data.validation is None
    assert cfg.method.r == 16 and cfg.method.alpha == 32
    assert cfg.train.lr == 2.0e-4 and cfg.train.max_steps is None and cfg.output_dir == str(tmp_path / "runs")


def test_set_overrides_file_and_records_sources(tmp_path):
    path = write(tmp_path, GOOD)
    r = resolve_config(path, ["train.lr=1e-4", "model=other-model", "eval.strategies=base,tuned"])
    assert r.config.train.lr == 1e-4
    assert r.config.model.name == "other-model"
    assert r.config.eval.strategies == ["base", "tuned"]
    assert r.sources["train.lr"] == "--set train.lr=1e-4"
    assert r.sources["train.batch_size"] == f"{path}:14"
    assert "train.weight_decay" not in r.sources


def test_yaml_11_exponent_string_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 2e-4\n"))
    assert cfg.train.lr == pytest.approx(2e-4)


def test_all_errors_reported_together_with_nearest_key(tmp_path):
    path = write(tmp_path, "train:\n  batch_sise: 8\n  eval_every: fifty\nmethod:\n  name: prefix\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["trian.lr=1"])
    assert info.value.problems == [
        f"{path}:2: unknown key 'train.batch_sise': did you mean 'train.batch_size'?",
        f"{path}:3: train.eval_every: expected int | auto, got 'fifty' (str)",
        f"{path}:5: method.name: expected lora | full | qlora | dpo | simpo, got 'prefix' (str)",
        "--set trian.lr=1: unknown key 'trian': did you mean 'train'?",
    ]
    assert str(info.value).startswith(f"4 config error(s) in {path}:")


def test_key_in_wrong_section_names_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data:\n  lr: 0.1\n"))
    assert "did you mean 'train.lr'?" in info.value.problems[0]


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.batch_size=eight", "train.packing=maybe", "train.lr=[1]"])
    assert info.value.problems == [
        "--set train.batch_size=eight: train.batch_size: expected int | auto, got 'eight' (str)",
        "--set train.packing=maybe: train.packing: expected bool, got 'maybe' (str)",
        "--set train.lr=[1]: train.lr: expected float | auto, got [1] (list)",
    ]


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:3: not valid YAML"):
        load_config(write(tmp_path, "train:\n  lr: [1,\n"))
    with pytest.raises(ConfigError, match="a config must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected a mapping of keys"):
        load_config(write(tmp_path, "train: 3\n"))


def test_set_without_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.lr"])


def test_every_key_has_help():
    rows = describe_keys()
    assert len(rows) > 40
    assert all(help_ and not help_.endswith(".") for _, _, help_ in rows)
    assert ("train.lr", "float | auto", "peak learning rate; auto = from the method and the model size") in rows


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_the_saved_config_leaves_the_api_key_out_and_loads_back(tmp_path):
    from tunesmith.config import to_yaml

    cfg = load_config(None, ["serve.api_key=sk-live-123", "train.lr=1e-4"])
    text = to_yaml(cfg)
    assert "sk-live-123" not in text and text.startswith("# not saved here (secret): serve.api_key\n")
    (tmp_path / "config.yaml").write_text(text)
    back = load_config(tmp_path / "config.yaml")
    assert back.serve.api_key is None and back.train == cfg.train and back.data == cfg.data
    assert not to_yaml(load_config(None)).startswith("#")  # no comment when nothing was left out


# ---------------------------------------------------------------- paths (issue 12)

def test_paths_in_a_file_resolve_against_its_folder(tmp_path, elsewhere, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = tmp_path / "project"
    path = write(project, "model: ./my-model\ndata:\n  train: faq.jsonl\n  validation: data/val.jsonl\n"
                 "  test: ../shared/test.jsonl\neval:\n  docs: ~/docs\noutput_dir: runs\n")
    cfg = load_config(path)
    assert cfg.model.name == str(project / "my-model")
    assert (cfg.data.train, cfg.data.validation) == (str(project / "faq.jsonl"), str(project / "data" / "val.jsonl"))
    assert cfg.data.test == str(tmp_path / "shared" / "test.jsonl")
    assert cfg.eval.docs == str(tmp_path / "home" / "docs") and cfg.output_dir == str(project / "runs")


def test_paths_from_set_and_defaults_resolve_against_the_current_folder(tmp_path, elsewhere):
    path = write(tmp_path, "data:\n  train: faq.jsonl\n  validation: val.jsonl\n")
    cfg = load_config(path, ["data.train=mine.jsonl", "eval.docs=/abs/docs"])
    assert cfg.data.train == str(elsewhere / "mine.jsonl")  # --set wins, and means here
    assert cfg.data.validation == str(tmp_path / "val.jsonl")
    assert cfg.eval.docs == "/abs/docs" and cfg.output_dir == str(elsewhere / "runs")
    assert load_config(None, ["output_dir=out"]).output_dir == str(elsewhere / "out")


def test_model_store_names_and_hub_ids_stay_names(tmp_path, elsewhere):
    (tmp_path / "org").mkdir()
    for name in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M"):
        assert load_config(write(tmp_path, f"model: {name}\n")).model.name == name
    assert load_config(write(tmp_path, "model: m.gguf\n")).model.name == str(tmp_path / "m.gguf")
    (tmp_path / "org" / "local").mkdir()
    assert load_config(write(tmp_path, "model: org/local\n")).model.name == str(tmp_path / "org" / "local")


def test_the_saved_config_means_the_same_paths_from_any_folder(tmp_path, elsewhere, monkeypatch):
    from tunesmith.config import to_yaml

    cfg = load_config(write(tmp_path, "data:\n  train: faq.jsonl\n"), ["data.test=t.jsonl"])
    saved = write(tmp_path / "runs" / "run-1", to_yaml(cfg), "config.yaml")  # as train saves it in the run folder
    monkeypatch.chdir(tmp_path)
    assert load_config(saved) == cfg


def test_a_config_object_gets_absolute_paths_for_saving(elsewhere):
    from tunesmith.config import DataConfig, absolute_paths

    cfg = absolute_paths(Config(data=DataConfig(train="faq.jsonl")))
    assert cfg.data.train == str(elsewhere / "faq.jsonl") and cfg.output_dir == str(elsewhere / "runs")


def test_the_shipped_example_config_works_from_any_folder(elsewhere):
    cfg = load_config(ROOT / "examples" / "support-faq" / "config.yaml")
    assert Path(cfg.data.train).is_file()
    assert cfg.output_dir == str(elsewhere / "runs")  # it sets none: runs go where you run tunesmith


def test_a_run_saved_before_paths_were_resolved_still_means_the_current_folder(tmp_path, elsewhere):
    from tunesmith.config import load_run_config

    saved = write(tmp_path / "runs" / "old-run", "data:\n  train: examples/faq.jsonl\n", "config.yaml")
    assert load_run_config(saved).data.train == str(elsewhere / "examples" / "faq.jsonl")


def test_auto_is_accepted_only_for_the_keys_chosen_from_the_data(tmp_path):
    cfg = load_config(None, ["train.epochs=auto", "method.r=12"])
    assert cfg.train.epochs == "auto" and cfg.method.r == 12 and cfg.train.lr == "auto"  # auto is the default
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=Auto"])
    assert info.value.problems[0].endswith("train.epochs: expected float | auto, got 'Auto' (str); write it in lowercase: auto")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.warmup_ratio=auto"])
    assert info.value.problems == [
        "--set train.warmup_ratio=auto: train.warmup_ratio: expected float, got 'auto' (str); 'auto' is accepted "
        "only for method.r, method.alpha, train.epochs, train.lr, train.batch_size, train.eval_every, train.save_every, "
        "train.gradient_checkpointing"]
