"""The logits-at-loss-positions loss equals the model's own loss and gradients: plain, LoRA, full, DDP."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.render import render
from tunesmith.train.loss import causal_lm_loss, linear_cross_entropy, plain_loss
from tunesmith.train.batching import collate_padded
from tunesmith.train.packing import collate_packed

CONVERSATIONS = [
    [{"role": "user", "content": "What is a bygglov?"},
     {"role": "assistant", "content": "A building permit from the municipality."}],
    [{"role": "user", "content": "How long does it take?"}, {"role": "assistant", "content": "About ten weeks."},
     {"role": "user", "content": "And complex cases?"}, {"role": "assistant", "content": "Up to twenty weeks."}],
    [{"role": "user", "content": "Cost?"}, {"role": "assistant", "content": "It depends on the municipal tariff."}],
]


@pytest.fixture(scope="module")
def batch(tokenizer):
    return collate_padded([render(c, tokenizer) for c in CONVERSATIONS], tokenizer.pad_token_id)


def _fresh(tiny_model_dir):
    from tunesmith.models.load import load_model

    model, _ = load_model(str(tiny_model_dir))
    return model.train()  # dropout is 0 in the tiny config, so train mode is deterministic


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, n = loss_fn(model, batch)
    (loss_sum / n).backward()
    return float(loss_sum.detach() / n), int(n), _grads(model)


def test_matches_the_models_own_loss(tiny_model_dir, batch):
    model = _fresh(tiny_model_dir)
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss_sum, n = causal_lm_loss(model, batch)
    assert int(n) == int((batch["labels"][:, 1:] != -100).sum())
    assert float(loss_sum / n) == pytest.approx(float(reference), abs=1e-5)


def test_full_fine_tuning_gradients_match(tiny_model_dir, batch):
    """Tied embeddings: the head's gradient and the embedding's gradient land on one weight."""
    model = _fresh(tiny_model_dir)
    ref_loss, ref_n, ref_grads = _run(model, plain_loss, batch)
    loss, n, grads = _run(model, lambda m, b: causal_lm_loss(m, b, chunk_size=7), batch)
    assert (loss, n) == (pytest.approx(ref_loss, abs=1e-5), ref_n)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_lora_gradients_match_and_lm_head_is_not_targeted(tiny_model_dir, batch):
    from tunesmith.config import MethodConfig
    from tunesmith.models.adapters import apply_lora

    torch.manual_seed(0)
    model = apply_lora(_fresh(tiny_model_dir), MethodConfig(r=16, alpha=32, dropout=0.0))
    for p in model.parameters():  # LoRA B starts at zero; make the adapters matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    # all-linear leaves a tied lm_head alone, so the fused plain-Linear path applies
    assert type(model.get_base_model().lm_head) is torch.nn.Linear
    ref_loss, _, ref_grads = _run(model, plain_loss, batch)
    loss, _, grads = _run(model, causal_lm_loss, batch)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert len(grads) == 2 * 7 * 2  # A and B, 7 linear modules, 2 layers
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6, rtol=1e-4), name


def test_chunked_linear_cross_entropy_matches_functional():
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    fused = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    (fused * 0.5).backward()
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (ref * 0.5).backward()
    assert float(fused) == pytest.approx(float(ref), rel=1e-6)
    assert torch.allclose(g_h, hidden.grad, atol=1e-6) and torch.allclose(g_w, weight.grad, atol=1e-6)


def test_packed_batch_loss_matches(tiny_model_dir, tokenizer):
    model = _fresh(tiny_model_dir)
    rows = [[render(c, tokenizer) for c in CONVERSATIONS]]
    batch = collate_packed(rows, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        ref = plain_loss(model, batch)
        ours = causal_lm_loss(model, batch)
    assert float(ours[0]) == pytest.approx(float(ref[0]), rel=1e-6) and int(ours[1]) == int(ref[1])


def test_ddp_wrapped_model_trains_two_steps(tiny_model_dir, batch, tmp_path):
    """Under DDP the wrapper's forward must run (its gradient hooks); two steps prove the reducer is happy."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _fresh(tiny_model_dir)
        ref_loss, _, ref_grads = _run(model, plain_loss, batch)
        ddp = DistributedDataParallel(model)
        for _ in range(2):
            loss, _, _ = _run(ddp, causal_lm_loss, batch)
        grads = {n.removeprefix("module."): g for n, g in _grads(ddp).items()}
    finally:
        dist.destroy_process_group()
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_eval_counts_match_full_logits(tiny_model_dir, batch):
    from tunesmith.train.loss import causal_lm_eval

    model = _fresh(tiny_model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    trained = targets != -100
    ref_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    loss, n, correct = causal_lm_eval(model, batch, chunk_size=5)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert (int(n), int(correct)) == (int(trained.sum()), int(((logits.argmax(-1) == targets) & trained).sum()))
