"""Preference tuning: shared-prompt pairs score as their two conversations do, the losses' math, and DPO / SimPO runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import peak_weights
from tunesmith.data.render import render, render_pair
from tunesmith.train import preference as P


def _pairs_data(n: int = 6) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": f"{i} plus {i} is {2 * i}.", "rejected": "I do not know, sorry. " * (1 + i % 3)}
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa").eval()
    peak_weights(model, seed=0)
    return model, tok


def _direct_logps(model, tok, example: dict) -> list[float]:
    """Each answer's summed log-probability from its whole conversation, scored alone (the reference)."""
    out = []
    for side in ("chosen", "rejected"):
        r = render(example["messages"] + [{"role": "assistant", "content": example[side]}], tok)
        ids = torch.tensor([r.input_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        out.append(sum(lp[t - 1, ids[0, t]].item() for t in range(1, len(r.input_ids)) if r.loss_mask[t]))
    return out


def test_a_pair_shares_its_prompt_and_keeps_each_conversations_ids(tiny):
    _, tok = tiny
    ex = _pairs_data(1)[0]
    pair = render_pair(ex, tok)
    for side, ids, mask in (("chosen", pair.chosen, pair.chosen_mask), ("rejected", pair.rejected, pair.rejected_mask)):
        whole = render(ex["messages"] + [{"role": "assistant", "content": ex[side]}], tok)
        assert pair.prompt + ids == whole.input_ids
        assert [0] * len(pair.prompt) + mask == whole.loss_mask
    assert pair.loss_units == 1 and len(pair.prompt) > 5


@pytest.mark.parametrize("layout", ["one pair a row", "two pairs a row", "all in one row", "unshared rows"])
def test_shared_and_packed_log_probabilities_equal_each_conversation_scored_alone(tiny, layout):
    model, tok = tiny
    examples = _pairs_data(4)
    pairs = [render_pair(e, tok) for e in examples]
    rows = {"one pair a row": [[p] for p in pairs], "two pairs a row": [pairs[:2], pairs[2:]],
            "all in one row": [pairs], "unshared rows": [[p] for p in pairs]}[layout]
    batch = P.collate_pairs(rows, pad_id=tok.pad_token_id, shared=layout != "unshared rows")
    with torch.no_grad():
        logps, counts = P.pair_logps(model, batch)
    expected = torch.tensor([_direct_logps(model, tok, e) for e in examples])
    assert (logps - expected).abs().max().item() < 1e-4
    assert counts.tolist() == [[sum(p.chosen_mask), sum(p.rejected_mask)] for p in pairs]


def test_a_sliding_window_layer_sees_the_same_window_in_a_shared_row():
    positions = torch.tensor([[0, 1, 2, 3, 2, 3, 4]])  # prompt 0-1, chosen 2-3, rejected 2-4
    branch = torch.tensor([[0, 0, 1, 1, 2, 2, 2]])
    block = torch.zeros_like(positions)
    mask = P.branch_mask(block, branch, positions, window=2)[0, 0]
    seen = (mask == 0).int().tolist()
    assert seen[3] == [0, 0, 1, 1, 0, 0, 0]  # chosen's second token: itself and the one before
    assert seen[4] == [0, 1, 0, 0, 1, 0, 0]  # rejected's first: the prompt's last and itself, not chosen
    assert seen[6] == [0, 0, 0, 0, 0, 1, 1]


def test_chunked_log_probabilities_and_their_gradients_equal_autograd():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    g = torch.randn(37)
    out = P.linear_log_probs(h, w, y, chunk_size=8)
    (out * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.log_softmax(h @ w.T, -1).gather(1, y[:, None]).squeeze(1)
    (ref * g).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)


def test_the_losses_follow_their_papers():
    logps = torch.tensor([[-10.0, -14.0], [-8.0, -6.0]], dtype=torch.float64)
    ref = torch.tensor([[-11.0, -12.0], [-8.0, -7.0]], dtype=torch.float64)
    counts = torch.tensor([[5, 7], [4, 2]])
    beta = 0.1
    loss, rc, rr = P.loss_terms(P.Objective("dpo", beta=beta), logps, counts, ref)
    h = beta * torch.tensor([(1 - -2), (0 - 1)], dtype=torch.float64)
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(h))
    assert torch.allclose(rc - rr, h)
    loss, _, _ = P.loss_terms(P.Objective("dpo", loss="ipo", beta=beta), logps, counts, ref)
    h = torch.tensor([1 / 5 - -2 / 7, 0 / 4 - 1 / 2], dtype=torch.float64)
    assert torch.allclose(loss, (h - 1 / (2 * beta)) ** 2)
    loss, _, _ = P.loss_terms(P.Objective("simpo", beta=2.0, gamma=0.5), logps, counts, None)
    h = 2.0 * torch.tensor([-10 / 5 - -14 / 7, -8 / 4 - -6 / 2], dtype=torch.float64) - 0.5
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(h))
    loss, _, _ = P.loss_terms(P.Objective("dpo", beta=beta, sft_weight=0.5), logps, counts, ref)
    base, _, _ = P.loss_terms(P.Objective("dpo", beta=beta), logps, counts, ref)
    assert torch.allclose(loss - base, 0.5 * torch.tensor([10 / 5, 8 / 4], dtype=torch.float64))


def test_at_step_zero_the_policy_is_the_reference(tiny_model_dir):
    """The reference pass (eval mode, packed, no gradient) and a training step's loss (train mode, LoRA with
    dropout configured, packed differently) agree at step 0: DPO's first loss is log 2, IPO's 1 / (2 beta)^2."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.adapters import apply_lora

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peak_weights(model, seed=1)
    lora = SimpleNamespace(r=8, alpha=16, dropout=0.3, target_modules="all-linear", use_rslora=False, use_dora=False)
    model = apply_lora(model, lora)
    assert P.disable_dropout(model) > 0
    P.check_starts_as_base(model)
    pairs = [render_pair(e, tok) for e in _pairs_data(5)]
    for p, ref in zip(pairs, P.score_rendered(model, pairs, pad_id=tok.pad_token_id, batch_size=2, pack=400)):
        p.ref = ref[:2]
    model.train()
    batch = P.collate_pairs([pairs[:3], pairs[3:]], pad_id=tok.pad_token_id)
    for obj, first in ((P.Objective("dpo"), math.log(2)), (P.Objective("dpo", loss="ipo", beta=0.1), 25.0)):
        loss, n, metrics = P.make_loss(obj)(model, batch)
        assert int(n) == 5 and float(loss) / 5 == pytest.approx(first, abs=1e-4)
        assert float(metrics["reward_margin"]) == pytest.approx(0.0, abs=1e-4)


def test_a_final_logit_soft_cap_is_applied_where_logits_are_made(tmp_path):
    """Gemma 2 soft-caps its logits (cap * tanh(logits / cap)): pairs and the SFT loss score as its forward does."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from conftest import TOKENIZER_DIR
    from tunesmith.data.render import pad_batch
    from tunesmith.train.loss import causal_lm_loss, plain_loss

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    peak_weights(model, seed=0)  # logits far beyond the cap: tanh is far from the identity
    examples = _pairs_data(3)
    batch = P.collate_pairs([[render_pair(e, tok)] for e in examples], pad_id=tok.pad_token_id, layout=P.shared_layout(model))
    with torch.no_grad():
        logps, _ = P.pair_logps(model, batch)
        sft = pad_batch([render(e["messages"] + [{"role": "assistant", "content": e["chosen"]}], tok) for e in examples],
                        tok.pad_token_id)
        ours, n = causal_lm_loss(model, sft)
        reference, m = plain_loss(model, sft)
    assert (logps - torch.tensor([_direct_logps(model, tok, e) for e in examples])).abs().max().item() < 1e-3
    assert float(ours) == pytest.approx(float(reference), rel=1e-5) and int(n) == int(m)


# ------------------------------------------------------------------ runs on the tiny model


def pairs_files(folder, n_train: int = 24, n_val: int = 6, seed: int = 0):
    """'What is a plus b?': the right sum chosen over a refusal, in TRL's standard format."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n_train + n_val):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                     "rejected": f"I cannot add {a} and {b}."})
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return train, val


def _train_rows(run) -> list[dict]:
    return [r for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def _run(tiny_model_dir, tmp_path, *sets, on_step=None, resume=None, name="dpo"):
    from train_helpers import overrides
    from tunesmith.train.finetune import finetune

    train, val = pairs_files(tmp_path / "data")
    cfg = overrides(tiny_model_dir, train, val, tmp_path / "runs") + ["method.name=dpo", *sets]
    return finetune(None, overrides=tuple(cfg), name=name if resume is None else None, resume=resume,
                    on_step=on_step, show_progress=False)


FIRST_LOSSES = {  # the first three training losses on the tiny model (train_helpers.overrides, lr 1e-3)
    "dpo": [0.693147, 0.66226, 0.628585],
    "ipo": [25.0, 24.466257, 23.900009],
    "simpo": [0.895216, 0.861524, 0.785798],
    "dpo-full": [0.693147, 0.676663, 0.659661],  # lr 1e-4
}


@pytest.mark.parametrize("kind", sorted(FIRST_LOSSES))
def test_a_preference_run_learns_the_preference_with_pinned_first_losses(tiny_model_dir, tmp_path, kind):
    sets = {"dpo": [], "ipo": ["method.loss=ipo"], "simpo": ["method.name=simpo"],
            "dpo-full": ["method.weights=full", "train.lr=1e-4"]}[kind]
    run = _run(tiny_model_dir, tmp_path, *sets, "train.max_steps=6")
    rows = _train_rows(run)
    assert [r["loss"] for r in rows[:3]] == pytest.approx(FIRST_LOSSES[kind], abs=1e-4)
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    validation = [r for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines())
                  if r["split"] == "validation"]
    assert validation[-1]["reward_accuracy"] == 1.0 and validation[-1]["pairs"] == 6
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["objective"]["name"] == ("simpo" if kind == "simpo" else "dpo")
    assert (run.dir / P.REFERENCE_FILE).exists() == (kind != "simpo")
    assert (run.final / ("model.safetensors" if kind == "dpo-full" else "adapter_config.json")).exists()


def test_a_resumed_dpo_run_equals_an_uninterrupted_one(tiny_model_dir, tmp_path, monkeypatch):
    whole = _run(tiny_model_dir, tmp_path / "a", "train.max_steps=6", "train.save_every=2")
    stopped = _run(tiny_model_dir, tmp_path / "b", "train.max_steps=6", "train.save_every=2",
                   on_step=lambda st, m: st.step == 4)
    assert stopped.status == "stopped"
    def never(*args, **kwargs):
        raise AssertionError("a resume reads the reference back, it never recomputes it")

    monkeypatch.setattr(P, "reference_logps", never)
    resumed = _run(tiny_model_dir, tmp_path / "b", "train.max_steps=6", "train.save_every=2", resume=stopped.dir)
    assert [r["loss"] for r in _train_rows(resumed)] == pytest.approx([r["loss"] for r in _train_rows(whole)], abs=1e-6)


def test_pairs_and_sft_data_go_to_their_own_methods(tiny_model_dir, tmp_path):
    from train_helpers import overrides, sums_dataset
    from tunesmith.errors import ConfigError, TrainError
    from tunesmith.train.finetune import finetune

    sft_train, sft_val = sums_dataset(tmp_path / "sft")
    with pytest.raises(TrainError, match="trains on preference pairs.*tunesmith data pairs"):
        finetune(None, overrides=tuple(overrides(tiny_model_dir, sft_train, sft_val, tmp_path / "r1") + ["method.name=dpo"]),
                 show_progress=False)
    train, val = pairs_files(tmp_path / "pairs")
    with pytest.raises(TrainError, match="holds preference pairs.*method.name=dpo"):
        finetune(None, overrides=tuple(overrides(tiny_model_dir, train, val, tmp_path / "r2")), show_progress=False)
    with pytest.raises(TrainError, match=r"val.jsonl holds preference pairs"):
        finetune(None, overrides=tuple(overrides(tiny_model_dir, sft_train, val, tmp_path / "r4")), show_progress=False)
    for bad, says in (("method.weights=full", "method.weights applies to dpo / simpo"),
                      ("method.beta=0.2", "method.beta applies to dpo / simpo"),
                      ("method.gamma=1", "method.gamma applies to simpo")):
        with pytest.raises(ConfigError, match=says):
            finetune(None, overrides=tuple(overrides(tiny_model_dir, sft_train, sft_val, tmp_path / "r5") + [bad]),
                     show_progress=False)
    with pytest.raises(ConfigError, match="method.beta must be > 0"):
        finetune(None, overrides=tuple(overrides(tiny_model_dir, train, val, tmp_path / "r3") + ["method.name=dpo",
                                                                                                  "method.beta=0"]),
                 show_progress=False)


def test_eval_on_a_pairs_file_reports_preference_accuracy_for_base_and_tuned(tiny_model_dir, tmp_path):
    from tunesmith.evaluate.workflow import compare

    run = _run(tiny_model_dir, tmp_path, "train.max_steps=12", "train.lr=3e-3")
    test, _ = pairs_files(tmp_path / "test", n_train=10, n_val=0, seed=7)
    result = compare(test, run=run.dir, strategies="base,tuned", probe="none", max_new_tokens=4, quiet=True)
    report = result.report
    base = report["strategies"]["base"]["preference_accuracy"]
    tuned = report["strategies"]["tuned"]["preference_accuracy"]
    assert 0.0 <= base <= 1.0 and tuned > base, (base, tuned)
    interval = report["intervals"]["tuned"]["preference_accuracy"]
    assert interval is not None and interval["low"] <= tuned - base <= interval["high"]
    assert report["examples"][0]["reference"].endswith(".")  # the chosen answer is the reference


@pytest.mark.parametrize("pack", [None, 200])
def test_scoring_pairs_packed_or_one_a_row_gives_each_pair_its_own_numbers(tiny, pack):
    model, tok = tiny
    examples = _pairs_data(6)
    pairs = [render_pair(e, tok) for e in examples]
    scores = P.score_rendered(model, pairs, pad_id=tok.pad_token_id, batch_size=4, pack=pack)
    expected = [_direct_logps(model, tok, e) for e in examples]
    assert [s[:2] for s in scores] == [pytest.approx(e, abs=1e-4) for e in expected]
    assert [s[2:] for s in scores] == [(sum(p.chosen_mask), sum(p.rejected_mask)) for p in pairs]


def test_ultrafeedback_rows_carry_the_prompt_in_both_conversations(tmp_path):
    from tunesmith.data.formats import read_examples

    user = {"role": "user", "content": "Name a colour."}
    row = {"prompt": "Name a colour.", "prompt_id": "x1", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [user, {"role": "assistant", "content": "Blue."}],
           "rejected": [user, {"role": "assistant", "content": "No."}],
           "messages": [user, {"role": "assistant", "content": "Blue."}]}
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    result = read_examples(path)
    assert result.format == "preference" and not result.findings
    assert result.examples[0]["messages"] == [user] and result.examples[0]["rejected"] == "No."


def test_the_bundled_dpo_example_reads_as_pairs():
    from pathlib import Path

    from tunesmith.config import load_config
    from tunesmith.data.formats import read_examples

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "support-faq" / "dpo.yaml")
    assert cfg.method.name == "dpo" and cfg.method.trains == "lora"
    result = read_examples(cfg.data.train)  # pairs-similar.jsonl: a pair per FAQ row
    assert result.format == "preference" and len(result.examples) == 503 and not result.findings
    sampled = read_examples(Path(cfg.data.train).with_name("pairs.jsonl"))  # the other kind, base samples rejected
    assert sampled.format == "preference" and len(sampled.examples) == 96 and not sampled.findings
