"""The shipped accelerate configs (DDP, FSDP, DeepSpeed ZeRO-2/3) parse with accelerate's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", None),
    "fsdp.yaml": ("FSDP", None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
}


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    kind, stage = EXPECTED[name]
    assert str(config.distributed_type).rsplit(".", 1)[-1] == kind
    assert config.num_processes == 2 and config.mixed_precision == "bf16" and not config.use_cpu
    if stage is not None:
        assert config.deepspeed_config["zero_stage"] == stage
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2  # FSDP2: per-parameter sharding, LoRA's frozen weights beside trained ones
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"  # each process checkpoints its shard
