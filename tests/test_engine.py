"""The one generation engine (issue 13): batched, continuous, cancellable, and the same answers as one at a time.

A tiny Llama on the real tokenizer, its weights drawn at std 0.08: varied greedy answers, and
attention spread widely enough that a pad slot the mask failed to hide changes them (checked:
without the mask these tests fail). Prompts differ in length by up to ~60 tokens, so rows carry
many pads. Each batched answer is compared token for token with the same prompt decoded alone,
and the single answer with transformers' own `generate`.
"""

from __future__ import annotations

import pytest

from conftest import build_tiny_model
from deploy_helpers import make_lora_run

QUESTIONS = ["What is the capital of France?", "List three colours.", "How do I reset my password?",
             "Write one sentence about the sea.", "Paris?", "Numbers like 12345 and 678 appear too, and the sea is deep! " * 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    import torch

    from tunesmith.models.load import load_model

    folder = build_tiny_model(tmp_path_factory.mktemp("engine") / "base")
    model, tok = load_model(str(folder), dtype="float32")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(str(folder), safe_serialization=True)  # the adapter test loads the same weights
    return folder, model.eval(), tok


def _prompts(tok) -> list[list[int]]:
    from tunesmith.data.render import render_prompt

    return [render_prompt([{"role": "user", "content": q}], tok) for q in QUESTIONS]


def _alone(model, tok, prompt, sampling, adapter=None):
    from tunesmith.models.engine import Engine

    return Engine(model, tok, max_batch=1).generate([prompt], sampling, [adapter] if adapter else None)[0]


def test_one_request_matches_transformers_generate(tiny):
    import torch

    from tunesmith.data.render import stop_token_ids
    from tunesmith.models.engine import Sampling

    _, model, tok = tiny
    prompt = _prompts(tok)[0]
    mine = _alone(model, tok, prompt, Sampling(max_tokens=20))
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, temperature=None, top_p=None,
                             top_k=None, eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    theirs = out[0, len(prompt):].tolist()
    assert list(mine.token_ids) == theirs[:len(mine.token_ids)] and len(mine.token_ids) == len(theirs)
    assert mine.text == tok.decode([t for t in theirs if t not in stop_token_ids(tok)], skip_special_tokens=True)


def test_a_batch_of_different_lengths_gives_each_prompt_its_own_answer(tiny):
    from tunesmith.models.engine import Engine, Sampling

    _, model, tok = tiny
    prompts, sampling = _prompts(tok), Sampling(max_tokens=24)
    engine = Engine(model, tok, max_batch=4)  # 6 prompts: two join as the first ones finish
    batched = engine.generate(prompts, sampling)
    alone = [_alone(model, tok, p, sampling) for p in prompts]
    assert [e.token_ids for e in batched] == [e.token_ids for e in alone]
    assert [e.text for e in batched] == [e.text for e in alone]
    assert engine.passes < sum(len(e.token_ids) for e in alone) / 2  # rows shared their forward passes


def test_scoring_a_reference_in_the_prefill_gives_the_separate_pass_loss_and_the_same_answers(tiny, monkeypatch):
    """compare's response loss, taken in the answer's own prefill (one pass), equals metrics.response_nll's
    pass over prompt + reference, row by row; the answers are the unscored ones, token for token."""
    import pytest

    from tunesmith.evaluate import metrics as M
    from tunesmith.evaluate.strategies import with_answer
    from tunesmith.models import engine as E
    from tunesmith.train.loss import cross_entropy_sum

    _, model, tok = tiny
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    conversations[1] = [{"role": "system", "content": "Answer briefly."}] + conversations[1]
    references = ["Paris.", "Red, green and blue, and many more colours than that " * 2, "Use the link.",
                  "The sea is deep.", "Yes", "A"]
    scored = [with_answer(c, r) for c, r in zip(conversations, references)]
    expected = M.response_nll(model, tok, scored, batch_size=8)
    plain = E.answer(model, tok, conversations, max_new_tokens=16, batch_size=4)
    both = E.answer(model, tok, conversations, max_new_tokens=16, batch_size=4, scored=scored,
                    scorer=cross_entropy_sum)
    assert [g.token_ids for g in both] == [g.token_ids for g in plain]
    for got, want in zip([g.score for g in both], expected):
        assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-4)
    # past the logits budget a prefill splits in two: the same scores
    monkeypatch.setattr(E, "SCORE_LOGITS", 1)
    split = E.answer(model, tok, conversations, max_new_tokens=16, batch_size=4, scored=scored,
                     scorer=cross_entropy_sum)
    assert [g.token_ids for g in split] == [g.token_ids for g in plain]
    assert [g.score[1] for g in split] == [w[1] for w in expected]
    # no scorer, or an engine that cannot keep hidden columns (sliding-window caches): nothing scored, the
    # caller's own pass does it
    assert all(g.score is None for g in E.answer(model, tok, conversations[:2], max_new_tokens=4, scored=scored[:2]))
    with pytest.raises(ValueError, match="cannot score"):
        E.Engine(model, tok).submit([1, 2], E.Sampling(4), print, score_ids=[3])
    monkeypatch.setattr(E, "_batchable", lambda model: False)
    assert all(g.score is None for g in E.answer(model, tok, conversations[:2], max_new_tokens=4, scored=scored[:2],
                                                 scorer=cross_entropy_sum))
    with pytest.raises(ValueError, match="cannot score"):
        E.Engine(model, tok, scorer=cross_entropy_sum).submit([1, 2], E.Sampling(4), print, score_ids=[3])


def test_prompts_sharing_a_few_shot_prefix_run_it_once_and_answer_as_alone(tiny):
    """compare's `prompt` strategy: one system prompt and the same few-shot turns before every question. The
    joining prompts' common prefix runs once (its cache copied to each row); answers and scored losses are
    the ones each prompt gets alone."""
    import pytest

    from tunesmith.data.render import render_prompt
    from tunesmith.evaluate import metrics as M
    from tunesmith.evaluate.strategies import with_answer
    from tunesmith.models import engine as E
    from tunesmith.train.loss import cross_entropy_sum

    _, model, tok = tiny
    shots = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4, as always."},
             {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    conversations = [[{"role": "system", "content": "Answer in a few words."}, *shots, {"role": "user", "content": q}]
                     for q in QUESTIONS]
    prompts = [render_prompt(c, tok) for c in conversations]
    shared = len(__import__("os").path.commonprefix(prompts))
    assert shared >= E.SHARED_PREFIX
    fed = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        engine = E.Engine(model, tok, max_batch=8)
        batched = engine.generate(prompts, E.Sampling(max_tokens=12))
    finally:
        hook.remove()
    assert fed[0] == (1, shared)  # the prefix, once
    assert fed[1][0] == len(prompts) and fed[1][1] == max(map(len, prompts)) - shared  # then each row's own tokens
    alone = [_alone(model, tok, p, E.Sampling(max_tokens=12)) for p in prompts]
    assert [e.token_ids for e in batched] == [e.token_ids for e in alone]
    scored = [with_answer(c, "Paris, I think. " * (i + 1)) for i, c in enumerate(conversations)]
    got = E.answer(model, tok, conversations, max_new_tokens=4, batch_size=8, scored=scored,
                   scorer=cross_entropy_sum)
    for g, want in zip(got, M.response_nll(model, tok, scored, batch_size=8)):
        assert g.score[1] == want[1] and g.score[0] == pytest.approx(want[0], rel=1e-4)
    # rows of different adapters never share a prefix's cache (a LoRA changes its keys and values)
    assert engine._shared_prefix([E.Handle(1, prompts[0], E.Sampling(), print, "a"),
                                  E.Handle(2, prompts[1], E.Sampling(), print, "b")]) == (0, None)


def test_requests_join_a_running_batch_and_leave_it_when_cancelled(tiny):
    from tunesmith.models.engine import Engine, Sampling

    _, model, tok = tiny
    prompts, sampling = _prompts(tok), Sampling(max_tokens=30, stop=("\uffff",))  # a stop that never occurs
    engine = Engine(model, tok, max_batch=8)
    events: dict[int, list] = {i: [] for i in range(4)}
    handles = [engine.submit(prompts[i], sampling, events[i].append) for i in range(2)]
    for _ in range(5):
        engine.step()
    assert engine.active == 2
    handles += [engine.submit(prompts[i], sampling, events[i].append) for i in (2, 3)]  # join mid-flight
    engine.step()
    assert engine.active == 4
    handles[1].cancel()
    engine.step()
    assert engine.active == 3  # gone at the next token boundary
    while engine.busy:
        engine.step()
    assert not any(e.finish_reason for e in events[1])  # a cancelled request gets no final event
    for i in (0, 2, 3):
        final = events[i][-1]
        assert final.finish_reason in ("stop", "length")
        assert final.token_ids == _alone(model, tok, prompts[i], sampling).token_ids
        assert "".join(e.text for e in events[i]) == _alone(model, tok, prompts[i], sampling).text


def test_caches_written_in_place_give_transformers_answers_across_many_regrowths(tiny, monkeypatch):
    """Each layer writes a step's keys into room reserved ahead (GROW_BY columns); here 3, so 40 tokens regrow
    the room a dozen times, and rows join, finish and are trimmed in between. Every answer must still be the
    one transformers' own generate gives (its DynamicCache concatenates), token for token."""
    import torch

    from tunesmith.models import engine as E

    _, model, tok = tiny
    monkeypatch.setattr(E, "GROW_BY", 3)  # read when each cache is made
    prompts = _prompts(tok)
    budgets = [40, 9, 40, 17, 33, 40]  # rows leave at different steps; the later ones join as they do
    engine = E.Engine(model, tok, max_batch=3)
    engine.stop_ids = frozenset()  # every answer runs to its budget
    mine = engine.generate(prompts, [E.Sampling(max_tokens=n, stop=("\uffff",)) for n in budgets])
    for prompt, n, event in zip(prompts, budgets, mine):
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        assert list(event.token_ids) == out[0, len(prompt):].tolist()


def test_seeded_sampling_does_not_depend_on_the_batch(tiny):
    from tunesmith.models.engine import Engine, Sampling

    _, model, tok = tiny
    prompts = _prompts(tok)
    seeded = [Sampling(max_tokens=16, temperature=0.9, top_p=0.95, seed=100 + i) for i in range(len(prompts))]
    batched = Engine(model, tok, max_batch=6).generate(prompts, seeded)
    alone = [_alone(model, tok, p, s) for p, s in zip(prompts, seeded)]
    assert [e.token_ids for e in batched] == [e.token_ids for e in alone]
    again = Engine(model, tok, max_batch=6).generate(prompts, seeded)
    assert [e.token_ids for e in again] == [e.token_ids for e in batched]


def test_rows_of_different_adapters_share_a_pass(tiny, tmp_path):
    from tunesmith.models import adapters
    from tunesmith.models.engine import BASE, Engine, Sampling

    folder, _, tok = tiny
    from tunesmith.models.load import load_model

    run_a = make_lora_run(folder, tmp_path / "run-a", seed=1)
    run_b = make_lora_run(folder, tmp_path / "run-b", seed=2)
    base, _ = load_model(str(folder), dtype="float32")
    peft_model = adapters.load_adapter(base, run_a / "final", adapter_name="a")
    adapters.add_adapter(peft_model, run_b / "final", "b")
    peft_model.eval()
    prompts, sampling = _prompts(tok)[:3], Sampling(max_tokens=12)
    names = ["a", "b", BASE]
    engine = Engine(peft_model, tok, max_batch=3)
    mixed = engine.generate(prompts, sampling, names)
    alone = [_alone(peft_model, tok, p, sampling, n) for p, n in zip(prompts, names)]
    assert [e.token_ids for e in mixed] == [e.token_ids for e in alone]
    assert len({e.token_ids for e in _all_three(peft_model, tok, prompts[0], sampling)}) > 1  # adapters matter


def _all_three(model, tok, prompt, sampling):
    from tunesmith.models.engine import BASE

    return [_alone(model, tok, prompt, sampling, n) for n in ("a", "b", BASE)]


def test_text_is_assembled_incrementally_without_splitting_characters_or_passing_stops(tokenizer):
    from tunesmith.models.engine import TextAssembler

    text = "Grüße aus Göteborg! 東京タワー 🎉 and a stop: STOP here, never shown."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = TextAssembler(tokenizer)
    pieces = [whole.push(t)[0] for t in ids] + [whole.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) and all("\ufffd" not in p for p in pieces)
    stopped = TextAssembler(tokenizer, stops=("STOP",))
    shown, hit = [], False
    for t in ids:
        piece, hit = stopped.push(t)
        shown.append(piece)
        if hit:
            break
    assert hit and "".join(shown) == "Grüße aus Göteborg! 東京タワー 🎉 and a stop: "


def test_device_auto_is_the_cpu_here_and_cuda_without_a_gpu_is_one_clear_error(monkeypatch):
    import torch

    from tunesmith.errors import ModelError
    from tunesmith.models.load import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    with pytest.raises(ModelError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ModelError, match="2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("scale", [3.0, 1.0])  # a peaked nucleus (inside the top-k) and a flat one (a full sort)
def test_top_p_samples_the_nucleus_a_full_sort_defines(scale):
    import torch

    from tunesmith.models.engine import NUCLEUS_FIRST, pick

    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * scale
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(descending=True)
    nucleus = set(order[sorted_probs.cumsum(0) - sorted_probs < 0.9].tolist())
    assert (len(nucleus) > NUCLEUS_FIRST) == (scale == 1.0)  # both paths of pick are taken
    gen = torch.Generator().manual_seed(1)
    picked = {pick(logits, 1.0, 0.9, gen) for _ in range(400)}
    assert picked <= nucleus and len(picked) > 1
