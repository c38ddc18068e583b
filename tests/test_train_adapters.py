"""The peft seam: apply, save, load, stack and merge LoRA adapters on the tiny model."""

from __future__ import annotations

import pytest

from tunesmith.config import MethodConfig
from tunesmith.errors import ModelError


@pytest.fixture
def tiny(tiny_model_dir):
    import torch

    from tunesmith.models.load import load_model

    torch.set_num_threads(1)
    return lambda: load_model(str(tiny_model_dir))[0]


def test_apply_save_load_merge_round_trip(tiny, tmp_path):
    import torch

    from tunesmith.models import adapters

    pm = adapters.apply_lora(tiny(), MethodConfig(r=4, alpha=8))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    # all-linear on 2 layers: q,k,v,o (64->64, 64->32 x2, 64->64) + gate,up,down (64<->128), rank 4
    assert trainable == 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    for name, p in pm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    pm.eval()
    adapters.save_adapter(pm, tmp_path / "a")
    assert adapters.is_adapter_dir(tmp_path / "a")
    loaded = adapters.load_adapter(tiny(), tmp_path / "a")
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = pm(x).logits
        assert torch.equal(loaded(x).logits, want)
        adapters.add_adapter(loaded, tmp_path / "a", "second")
        assert set(loaded.peft_config) == {"default", "second"}
        merged = adapters.merge(loaded)
        assert not adapters.is_peft(merged)
        assert torch.allclose(merged(x).logits, want, atol=1e-5)


def test_flags_reach_peft(tiny):
    from tunesmith.models import adapters

    cfg = adapters.lora_config(MethodConfig(r=16, alpha=32, use_rslora=True, use_dora=True, target_modules="q_proj, v_proj"))
    assert cfg.use_rslora and cfg.use_dora and set(cfg.target_modules) == {"q_proj", "v_proj"}


def test_unknown_target_and_bad_folder_are_clear(tiny, tmp_path):
    from tunesmith.models import adapters

    with pytest.raises(ModelError, match="not found in the base model"):
        adapters.apply_lora(tiny(), MethodConfig(r=16, alpha=32, target_modules="nope"))
    with pytest.raises(ModelError, match="adapter_config.json"):
        adapters.load_adapter(tiny(), tmp_path)


def test_fused_kernels_setting(tiny, monkeypatch):
    """null applies Liger only where it can; true says what is missing; false never touches the model."""
    import torch

    from tunesmith.errors import TrainError
    from tunesmith.train.methods import fused_kernels

    model = tiny()
    assert fused_kernels(model, False) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fused_kernels(model, None) is False
    with pytest.raises(TrainError, match="train.fused_kernels=true needs a CUDA GPU"):
        fused_kernels(model, True)
