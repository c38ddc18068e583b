"""Config: defaults < YAML < --set, every error reported at once, messages pinned."""

from __future__ import annotations

import pytest

from tunesmith.config import Config, describe_keys, load_config, resolve_config
from tunesmith.errors import ConfigError

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


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.method.name == "lora" and cfg.train.early_stopping_patience == 3


def test_user_contract_keys_load(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.data.train == "examples/support-faq/faq.jsonl"
    assert cfg.data.validation is None
    assert cfg.method.r == 16 and cfg.method.alpha == 32
    assert cfg.train.lr == 2.0e-4 and cfg.train.max_steps is None and cfg.output_dir == "runs"


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
        f"{path}:3: train.eval_every: expected int, got 'fifty' (str)",
        f"{path}:5: method.name: expected lora | full | qlora, got 'prefix' (str)",
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
        "--set train.batch_size=eight: train.batch_size: expected int, got 'eight' (str)",
        "--set train.packing=maybe: train.packing: expected bool, got 'maybe' (str)",
        "--set train.lr=[1]: train.lr: expected float, got [1] (list)",
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
    assert ("train.lr", "float", "peak learning rate") in rows


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
