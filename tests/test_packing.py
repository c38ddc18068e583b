"""Packing: row plans, the block-causal mask, and packed == unpacked per example on a tiny model;
the flex path (train.packed_attention=flex) against the dense mask."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunesmith.data.render import Rendered, render, render_example
from tunesmith.train.batching import collate_padded
from tunesmith.train.packing import (
    IGNORE, AttentionLayout, attend_with, attention_layout, batch_stats, block_causal_mask, collate_packed,
    first_fit_decreasing, packed_attention, packed_micro_batches, plan_rows,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is a bygglov?"},
     {"role": "assistant", "content": "A building permit from the municipality."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "How long does it take?"},
     {"role": "assistant", "content": "About ten weeks."},
     {"role": "user", "content": "And for complex cases?"},
     {"role": "assistant", "content": "Up to twenty weeks, with an extension."}],
    [{"role": "user", "content": "Cost?"}, {"role": "assistant", "content": "It depends on the municipal tariff."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tunesmith.models.load import load_model

    torch.manual_seed(0)
    model, tok = load_model(str(tiny_model_dir))
    return model, tok


def test_first_fit_decreasing_pins_bins():
    assert first_fit_decreasing([5, 9, 3, 7, 1], 10) == [[1, 4], [3, 2], [0]]


def shape(plan):
    return [(len(p.rows), p.length) for p in plan.passes]


def test_plan_prefers_one_full_row_when_attention_is_cheap():
    lengths = [300, 120, 110, 100, 90, 80, 70, 60]  # 930 tokens
    plan = plan_rows(lengths, 1024, attention_tokens=0)
    assert shape(plan) == [(1, 930)] and plan.waste(lengths) == 0.0
    # With the default attention weight, three rows of at most 320 in one pass (960 slots, 3%
    # padding) cost less than one long row: 48 + 960 * (1 + 320/3000) < 48 + 930 * (1 + 930/3000),
    # and less than a pass per row (48 more per pass).
    plan = plan_rows(lengths, 1024)
    assert shape(plan) == [(3, 320)]
    assert sorted(i for row in plan.rows for i in row) == list(range(8))
    assert plan.waste(lengths) == pytest.approx(1 - 930 / 960)
    # Passes cost nothing: each row in a pass of its own, padded to nothing.
    plan = plan_rows(lengths, 1024, pass_tokens=0)
    assert shape(plan) == [(1, 300), (1, 300), (1, 270), (1, 60)] and plan.waste(lengths) == 0.0


def test_plan_pads_each_pass_to_its_own_longest_row():
    lengths = [900, 100, 100, 100, 100, 100, 100, 100]
    plan = plan_rows(lengths, 1024)
    # The long example and the seven short ones (one 700-token row) cannot share a pass of
    # 1024 slots, so each pass is exactly as long as its row: no padding at all.
    assert shape(plan) == [(1, 900), (1, 700)] and plan.waste(lengths) == 0.0
    assert all(len(p.rows) * p.length <= 1024 for p in plan.passes)


def test_plan_takes_more_rows_than_the_bound_when_first_fit_needs_them():
    """Gemma's FAQ rows in max_length 128 failed an assertion: the token bound said three rows,
    first-fit-decreasing needs four (no two 65s share 128)."""
    plan = plan_rows([120, 65, 65, 65], 128)
    assert sorted(i for row in plan.rows for i in row) == [0, 1, 2, 3]
    assert len(plan.rows) == 4 and all(len(p.rows) * p.length <= 128 for p in plan.passes)


def test_collate_packed_layout():
    a = Rendered([1, 2, 3], [0, 1, 1])
    b = Rendered([4, 5], [1, 1])  # a text example: every token trained
    batch = collate_packed([[a, b]], pad_id=0, length=7)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # b's first token would be predicted from a's last token: never trained.
    assert batch["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5, IGNORE, IGNORE]]
    assert batch["token_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0]]
    allowed = (batch["attention_mask"][0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # padding sees padding only: no fully masked (NaN) row
        [0, 0, 0, 0, 0, 1, 1],
    ]
    assert batch_stats(batch) == (5, 7, 3)


def test_sliding_window_masks_per_layer_type():
    """A sliding-window layer sees the last `window` keys of its own example; a per-type layout gives a dict."""
    from tunesmith.train.packing import AttentionLayout

    layout = AttentionLayout({"full_attention": None, "sliding_attention": 2}, per_type=True)
    batch = collate_packed([[Rendered([1, 2, 3, 4], [1] * 4), Rendered([5, 6], [1, 1])]], layout=layout)
    allowed = {k: (m[0, 0] == 0).int().tolist() for k, m in batch["attention_mask"].items()}
    assert allowed["sliding_attention"] == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert allowed["full_attention"][3] == [1, 1, 1, 1, 0, 0]


def test_packing_refuses_layers_a_block_mask_cannot_confine():
    from types import SimpleNamespace

    from tunesmith.errors import TrainError

    config = SimpleNamespace(model_type="qwen3_next", layer_types=["linear_attention", "full_attention"])
    with pytest.raises(TrainError, match="packing is not supported for architecture 'qwen3_next': its linear_attention"):
        attention_layout(SimpleNamespace(config=config))


def test_mask_dtype_and_values():
    mask = block_causal_mask(torch.tensor([[0, 0, 1]]), dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.shape == (1, 1, 3, 3)
    assert torch.isinf(mask[0, 0, 2, 0]) and mask[0, 0, 1, 0] == 0


def _example_losses(model, batch, spans):
    """Summed CE per example; spans = [(row, start, end)] of each example in the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch.get("position_ids")).logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE, reduction="none")
    return [float(ce[r, max(s - 1, 0) : e - 1].sum()) for r, s, e in spans]


def _packed_and_unpacked(model, tok, device="cpu", conversations=CONVERSATIONS):
    """Each example's summed loss packed (two rows, the second padded: covers padding, boundaries and
    text examples) and alone, in the packed order; and each example's trained-token count.

    The packed mask is the one training builds for this model (sliding windows included)."""
    examples = [render(c, tok) for c in conversations] + [render_example({"text": "Plain text, all trained."}, tok)]
    lengths = [len(e.input_ids) for e in examples]

    def to(batch):
        return {k: to(v) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}

    with torch.no_grad():
        unpacked = [_example_losses(model, to(collate_padded([e], tok.pad_token_id)), [(0, 0, n)])[0]
                    for e, n in zip(examples, lengths)]
        rows = [[examples[1], examples[3]], [examples[0], examples[2]]]
        batch = collate_packed(rows, pad_id=tok.pad_token_id, length=max(lengths[1] + lengths[3], lengths[0] + lengths[2]) + 5,
                               layout=attention_layout(model))
        spans = [(0, 0, lengths[1]), (0, lengths[1], lengths[1] + lengths[3]),
                 (1, 0, lengths[0]), (1, lengths[0], lengths[0] + lengths[2])]
        packed = _example_losses(model, to(batch), spans)
    order = [1, 3, 0, 2]
    return packed, [unpacked[i] for i in order], [examples[i].n_trained for i in order]


def test_packed_loss_equals_unpacked_per_example(tiny):
    packed, expected, _ = _packed_and_unpacked(*tiny)
    assert packed == pytest.approx(expected, abs=1e-4)
    assert min(expected) > 1.0  # real losses, not zeros


def test_nothing_leaks_across_examples(tiny):
    model, tok = tiny
    a, b = render(CONVERSATIONS[0], tok), render(CONVERSATIONS[2], tok)
    changed = Rendered([(t * 7 + 11) % 49000 for t in a.input_ids], a.loss_mask)
    with torch.no_grad():
        logits = [model(**{k: v for k, v in collate_packed([[x, b]]).items() if k in ("input_ids", "attention_mask", "position_ids")}).logits
                  for x in (a, changed)]
    n = len(a.input_ids)
    assert not torch.allclose(logits[0][0, :n], logits[1][0, :n])  # A itself did change
    assert torch.allclose(logits[0][0, n:], logits[1][0, n:], atol=1e-6)  # B did not


def test_finetune_packed_equals_padded_without_dropout(tiny_model_dir, tmp_path, store_home, monkeypatch):
    """The default training path packs; with LoRA dropout 0 its losses are the padded path's."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from train_helpers import overrides, sums_dataset

    from tunesmith.config import load_config
    from tunesmith.train.finetune import finetune

    from tunesmith.train import packing as packing_module

    monkeypatch.setattr(packing_module, "ATTENTION_TOKENS", 0)  # fewest slots: each step's examples in one row
    train, val = sums_dataset(tmp_path / "data", n_train=12, n_val=4)
    losses, waste = {}, {}
    for packing in ("true", "false"):
        sets = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=3, eval_every=3, save_every=3)
        cfg = load_config(None, sets + [f"train.packing={packing}", "method.dropout=0", "train.group_by_length=false"])
        run = finetune(cfg, name=f"packing-{packing}", show_progress=False)
        rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
        losses[packing] = [r["loss"] for r in rows]
        waste[packing] = run.summary["padding_waste"]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
    assert len(losses["true"]) == 4  # 3 train steps and one validation
    assert (waste["true"], waste["false"]) == (0.0, 0.0093)  # padded, same (ungrouped) order


def test_micro_batches_bound_tokens_per_pass(tokenizer):
    from tunesmith.train.packing import packed_micro_batches

    long = [{"role": "user", "content": "word " * 150}, {"role": "assistant", "content": "answer " * 150}]
    examples = [render(c, tokenizer) for c in CONVERSATIONS * 4] + [render(long, tokenizer)] * 2
    batches = packed_micro_batches(examples, max_length=512, pad_id=tokenizer.pad_token_id)
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    assert all(rows * length <= 512 for rows, length in shapes), shapes  # no pass over max_length slots
    assert len(shapes) > 1 and sum(batch_stats(b)[1] for b in batches) < 1.01 * 1232  # 1232 tokens, <1% padding
    assert sum(batch_stats(b)[2] for b in batches) == sum(e.n_trained for e in examples)
    assert sum(batch_stats(b)[0] for b in batches) == sum(len(e.input_ids) for e in examples)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("fused", [False, True], ids=["sdpa", "sdpa+liger"])
def test_packed_loss_equals_unpacked_on_cuda(tiny_model_dir, fused):
    """The GPU path (SDPA with the 4D block mask, and Liger's RMSNorm/SwiGLU) keeps examples apart."""
    from tunesmith.models.load import load_model
    from tunesmith.train import methods

    if fused:
        pytest.importorskip("liger_kernel")
    model, tok = load_model(str(tiny_model_dir), dtype="float32")
    assert methods.fused_kernels(model, fused) is fused
    packed, expected, trained = _packed_and_unpacked(model.cuda().eval(), tok, "cuda")
    per_token = [p / n for p, n in zip(packed, trained)]
    assert per_token == pytest.approx([e / n for e, n in zip(expected, trained)], abs=1e-4)
    assert min(per_token) > 1.0  # real losses, not zeros
    # Only that model changed: a model loaded afterwards still runs on the CPU.
    fresh, _ = load_model(str(tiny_model_dir), dtype="float32")
    assert torch.isfinite(fresh(input_ids=torch.tensor([render(CONVERSATIONS[0], tok).input_ids])).logits).all()


# ------------------------------------------------------------------ flex_attention: BlockMasks, not the dense mask


def test_block_masks_allow_what_the_dense_masks_allow():
    from torch.nn.attention.flex_attention import create_mask

    layout = AttentionLayout({"full_attention": None, "sliding_attention": 2}, per_type=True)
    rows = [[Rendered([1, 2, 3, 4], [1] * 4), Rendered([5, 6], [1, 1])], [Rendered([7, 8, 9], [1] * 3)]]
    dense, flex = (collate_packed(rows, layout=layout, attention=a) for a in ("dense", "flex"))
    for kind in layout.windows:
        block_mask = flex["attention_mask"][kind]
        assert block_mask.shape == (2, 1, 6, 6)  # 4D: transformers passes it to every layer of that type as it is
        allowed = create_mask(block_mask.mask_mod, 2, 1, 6, 6, device="cpu")
        assert torch.equal(allowed, dense["attention_mask"][kind] == 0), kind
    assert all(torch.equal(flex[k], dense[k]) for k in ("input_ids", "position_ids", "labels", "token_mask"))


def test_flex_passes_are_single_rows_without_padding():
    examples = [Rendered(list(range(1, n + 1)), [1] * n) for n in (30, 12, 50, 7, 21)]  # 120 tokens
    gpu = packed_micro_batches(examples, max_length=64, attention="flex", pass_slots=1 << 40)  # device_costs("cuda")
    assert [tuple(b["input_ids"].shape) for b in gpu] == [(1, 120)]
    cpu = packed_micro_batches(examples, max_length=64, attention="flex")  # passes of at most max_length
    assert all(b["input_ids"].shape[0] == 1 and b["input_ids"].shape[1] <= 64 for b in cpu)
    assert sum(batch_stats(b)[1] for b in cpu) == 120 and len(cpu) == 2
    assert sum(batch_stats(b)[2] for b in cpu) == 120 - 5  # each example's first token is not trained


def test_packed_attention_setting():
    from tunesmith.errors import ConfigError, TrainError
    from tunesmith.config import load_config
    from tunesmith.train.finetune import check_config

    model = _arch_model("llama")
    assert packed_attention(model, "auto", "cpu") == "dense"  # the CPU keeps the measured path
    assert packed_attention(model, "dense", "cuda") == "dense"
    assert packed_attention(model, "auto", "cuda", packs=False) == "dense"
    with pytest.raises(TrainError, match=r"train.packed_attention=flex needs a CUDA GPU \(on the CPU torch's "
                                         "flex_attention has no backward pass\)"):
        packed_attention(model, "flex", "cpu")
    with pytest.raises(ConfigError) as e:
        check_config(load_config(None, ["data.train=t.jsonl", "train.packing=false", "train.packed_attention=flex"]))
    assert e.value.problems == ["train.packed_attention=flex needs train.packing=true"]
    with pytest.raises(ConfigError, match="method dpo's pairs share their prompt"):
        check_config(load_config(None, ["data.train=t.jsonl", "method.name=dpo", "train.packed_attention=flex"]))


def _arch_model(name: str):
    """A tiny model of the architecture matrix's `name` family (tests/arch_helpers.py), vocabulary 256, seed 0."""
    from arch_helpers import ARCHS, COMMON
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = ARCHS[name]
    config = AutoConfig.for_model(arch.model_type, vocab_size=256, **{**COMMON, **arch.config})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _random_rows():
    """Two rows of examples longer than the matrix's sliding window (8): the second row padded."""
    g = torch.Generator().manual_seed(1)
    ex = [Rendered(torch.randint(1, 256, (n,), generator=g).tolist(), [0] * 3 + [1] * (n - 3)) for n in (13, 20, 25)]
    return [[ex[0], ex[1]], [ex[2]]]


def _to(batch, device):
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def _loss_and_grads(model, batch):
    from tunesmith.train.loss import causal_lm_loss

    model.zero_grad(set_to_none=True)
    loss_sum, n = causal_lm_loss(model, batch)
    loss = loss_sum / n
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _flex_against_dense(model, device="cpu"):
    """(dense loss, flex loss, largest gradient difference, largest gradient) for the same packed rows."""
    rows, layout = _random_rows(), attention_layout(model)
    dense_loss, dense_grads = _loss_and_grads(model, _to(collate_packed(rows, layout=layout), device))
    attend_with(model, "flex")
    flex_loss, flex_grads = _loss_and_grads(
        model, _to(collate_packed(rows, layout=layout, attention="flex", device=device), device))
    assert flex_grads.keys() == dense_grads.keys()
    diff = max(float((flex_grads[k] - dense_grads[k]).abs().max()) for k in dense_grads)
    return dense_loss, flex_loss, diff, max(float(g.abs().max()) for g in dense_grads.values())


@pytest.fixture
def reference_flex(monkeypatch):
    """transformers' flex_attention path through torch's unfused reference flex_attention, which has a CPU backward.

    torch refuses gradients through flex_attention on the CPU ("FlexAttention does not support
    backward on CPU"), and transformers compiles it with inductor, whose CPU kernel is forward
    only. The reference (the flex_attention operator's own math, which torch checks its kernels
    against) takes the same BlockMask and score_mod. So this checks our BlockMasks and
    transformers' use of them (per layer type, soft-capping, GQA), not a fused kernel: the
    compiled CPU kernel is checked forward below, the CUDA one by test_flex_equals_dense_on_cuda.
    """
    import torch.nn.attention.flex_attention as flex
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda query, key, value, training=False, **kw: flex.flex_attention(query, key, value, **kw))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the reference, on purpose
@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2", "gemma3"])
def test_flex_loss_and_gradients_equal_the_dense_mask(arch, reference_flex):
    """Full attention (Llama), one window for all layers (Mistral), per-type windows with soft-capping
    (Gemma 2) and Gemma 3's five sliding layers to one full: the same loss and gradients."""
    dense, flex, diff, largest = _flex_against_dense(_arch_model(arch).train())
    assert flex == pytest.approx(dense, abs=1e-4) and dense > 1.0
    assert diff < 1e-4 and largest > 1e-2  # real gradients, equal within 1e-4


def test_compiled_block_mask_keeps_examples_apart():
    """transformers' flex path as it runs on this CPU (inductor compiles flex_attention to C++, ~15 s
    once; forward only): the dense mask's logits, and changing example A leaves B's logits as they were."""
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("inductor compiles flex_attention's CPU kernel with a C++ compiler: none on PATH")
    model = _arch_model("llama").eval()
    (a, b), _ = _random_rows()
    changed = Rendered([(t * 7 + 11) % 255 + 1 for t in a.input_ids], a.loss_mask)
    inputs = ("input_ids", "attention_mask", "position_ids")
    with torch.no_grad():
        dense = model(**{k: v for k, v in collate_packed([[a, b]]).items() if k in inputs}).logits
        attend_with(model, "flex")
        flex = [model(**{k: v for k, v in collate_packed([[x, b]], attention="flex").items() if k in inputs}).logits
                for x in (a, changed)]
    n = len(a.input_ids)
    assert torch.allclose(flex[0], dense, atol=1e-4)
    assert not torch.allclose(flex[0][0, :n], flex[1][0, :n])  # A itself did change
    assert torch.allclose(flex[0][0, n:], flex[1][0, n:], atol=1e-6)  # B did not


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_flex_equals_dense_on_cuda(arch):
    """The real thing: flex_attention's Triton kernels, forward and backward, against the dense mask through SDPA."""
    dense, flex, diff, largest = _flex_against_dense(_arch_model(arch).cuda().train(), "cuda")
    assert flex == pytest.approx(dense, abs=1e-4) and dense > 1.0
    assert diff < 1e-4 and largest > 1e-2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the reference, on purpose
def test_finetune_flex_equals_dense(tiny_model_dir, tmp_path, store_home, monkeypatch, reference_flex):
    """train.packed_attention=flex through finetune (the model switched, BlockMasks made on its device,
    validation through flex too) gives the dense path's losses; flex_missing is lifted for the CPU."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from train_helpers import overrides, sums_dataset

    from tunesmith.config import load_config
    from tunesmith.train import packing as packing_module
    from tunesmith.train.finetune import finetune

    monkeypatch.setattr(packing_module, "flex_missing", lambda model, device: None)
    train, val = sums_dataset(tmp_path / "data", n_train=12, n_val=4)
    losses, runs = {}, {}
    for attention in ("dense", "flex"):
        sets = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=3, eval_every=3, save_every=3)
        cfg = load_config(None, sets + [f"train.packed_attention={attention}", "method.dropout=0"])
        runs[attention] = finetune(cfg, name=f"attention-{attention}", show_progress=False)
        rows = [json.loads(line) for line in (runs[attention].dir / "metrics.jsonl").read_text().splitlines()]
        losses[attention] = [r["loss"] for r in rows]
    assert losses["flex"] == pytest.approx(losses["dense"], abs=1e-5) and len(losses["flex"]) == 4
    assert runs["flex"].summary["padding_waste"] == 0.0  # one unpadded row a pass
    manifest = json.loads((runs["flex"].dir / "manifest.json").read_text())
    assert manifest["packed_attention"] == "flex"
