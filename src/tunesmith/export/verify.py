"""Prove an export answers like the tuned model in memory: same prompts, greedy decoding, token by token.

A loader (peft, transformers, llama.cpp) gives a `Candidate` that maps prompt ids to answer ids.
Lossless exports must give the same answers exactly; rounded ones (bf16, GGUF types) are reported
honestly (exact answers, token agreement, teacher-forced top-1 agreement) and fail only when the
teacher-forced agreement falls below what rounding explains (`min_top1`): a broken file, not drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ExportError

# The prompts used when a run has no held-out examples (a plain model, or data not kept).
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "How do I reset my password?",
)

Generate = Callable[[list[int]], list[int]]


@dataclass
class Candidate:
    """An export reloaded: `generate(prompt_ids) -> answer ids`; `logits(ids)` (T, V) when the loader exposes
    them, or `forced_argmax` (per prompt, its argmax fed the reference answer) when only that comes back."""

    loader: str
    generate: Generate
    logits: Callable[[list[int]], Any] | None = None
    lossless: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    forced_argmax: list[list[int]] | None = None
    min_top1: float | None = None  # below this teacher-forced agreement a rounded file is broken


@dataclass
class Reference:
    """The tuned model in memory: its prompts (as ids), greedy answers, and its logits over each
    prompt + answer from the last prompt token on (kept so the model may be merged in place after)."""

    prompts: list[list[dict]]
    prompt_ids: list[list[int]]
    answers: list[list[int]]
    texts: list[str]
    forced: list[Any]


def prompts_for(run_dir: Path | None, n: int) -> list[list[dict]]:
    """Up to `n` conversations from the run's held-out data (each ends before the last answer)."""
    found: list[list[dict]] = []
    for split in ("test", "validation", "train"):
        path = run_dir / "data" / f"{split}.jsonl" if run_dir else None
        if path is None or not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            msgs = _prompt_messages(line)
            if msgs and len(found) < n:
                found.append(msgs)
        if len(found) >= n:
            break
    for text in DEFAULT_PROMPTS:
        if len(found) >= n:
            break
        found.append([{"role": "user", "content": text}])
    return found


def _prompt_messages(line: str) -> list[dict] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    msgs = [{"role": m["role"], "content": m["content"]} for m in row.get("messages") or []]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs if msgs and msgs[-1]["role"] == "user" else None


def hf_generate(model, tokenizer, max_new_tokens: int) -> Generate:
    """Greedy answer ids (the stop token included) from a transformers or peft model, through the one engine."""
    from tunesmith.models.engine import Engine, Sampling

    engine = Engine(model, tokenizer, max_batch=1)

    def generate(prompt_ids: list[int]) -> list[int]:
        return list(engine.generate([prompt_ids], Sampling(max_tokens=max_new_tokens))[0].token_ids)

    return generate


def hf_logits(model) -> Callable[[list[int]], Any]:
    def logits(ids: list[int]):
        import torch

        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu()  # (T, V)

    return logits


def reference(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> Reference:
    from tunesmith.data.render import render_prompt

    gen = hf_generate(model, tokenizer, max_new_tokens)
    logits = hf_logits(model)
    ids = [render_prompt(p, tokenizer) for p in prompts]
    answers = [gen(i) for i in ids]
    forced = [logits(i + a)[len(i) - 1:] for i, a in zip(ids, answers)]  # (A+1, V) each
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    return Reference(prompts, ids, answers, texts, forced)


def compare(ref: Reference, cand: Candidate) -> dict[str, Any]:
    """Greedy answers of `cand` against the reference; a dict for verification.json."""
    got = [cand.generate(i) for i in ref.prompt_ids]
    exact = sum(a == b for a, b in zip(ref.answers, got))
    same = sum(_common_prefix(a, b) for a, b in zip(ref.answers, got))
    longest = sum(max(len(a), len(b)) for a, b in zip(ref.answers, got)) or 1
    result: dict[str, Any] = {
        "loader": cand.loader, "prompts": len(got), "exact_matches": exact,
        "token_agreement": round(same / longest, 4), **cand.extra,
    }
    if cand.logits is not None:
        result.update(_teacher_forced(ref, cand.logits))
    elif cand.forced_argmax is not None:
        result.update(_forced_agreement(ref, cand.forced_argmax))
    result["status"] = _status(result, cand)
    result["first_difference"] = _first_difference(ref, got)
    return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _teacher_forced(ref: Reference, cand_logits) -> dict[str, Any]:
    """Feed the reference's own answers to the candidate: top-1 agreement and the largest logit gap."""
    agree = total = 0
    gap = 0.0
    for prompt, answer, a in zip(ref.prompt_ids, ref.answers, ref.forced):
        b = cand_logits(prompt + answer)[len(prompt) - 1:]  # (A+1, V)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
        gap = max(gap, float((a - b).abs().max()))
    return {"teacher_forced_top1": round(agree / max(total, 1), 4), "max_abs_logit_diff": float(f"{gap:.3g}")}


def _forced_agreement(ref: Reference, forced_argmax: list[list[int]]) -> dict[str, Any]:
    """Teacher-forced top-1 agreement from the candidate's argmax alone (llama.cpp returns no logits to us)."""
    agree = total = 0
    for a, b in zip(ref.forced, forced_argmax):
        agree += sum(int(x) == int(y) for x, y in zip(a.argmax(-1).tolist(), b))
        total += a.shape[0]
    return {"teacher_forced_top1": round(agree / max(total, 1), 4)}


def _status(result: dict[str, Any], cand: Candidate) -> str:
    """'match'; for a rounded file 'close' (answers drift: that is the rounding, reported as agreement)
    unless the teacher-forced agreement is below `min_top1` or a check of the file failed; 'differs' otherwise."""
    if result.get("problems"):
        return "differs"
    if result["exact_matches"] == result["prompts"]:
        return "match"
    if cand.lossless:
        return "differs"
    top1 = result.get("teacher_forced_top1")
    if cand.min_top1 is not None and top1 is not None and top1 < cand.min_top1:
        return "differs"
    return "close"


def weights_check(expected: dict[str, Any], model) -> dict[str, Any]:
    """Do the reloaded weights equal the intended (rounded) ones (`expected`: name -> numpy array or tensor)?
    A wrong name, layout or permutation shows here as a large difference, whatever the rounding did to the answers."""
    state = model.state_dict()
    missing = [k for k in expected if k not in state]
    diff = max((float((state[k].float().cpu() - _tensor(v)).abs().max()) for k, v in expected.items() if k in state),
               default=0.0)
    return {"weights_exact": not missing and diff <= 1e-6, "max_weight_diff": float(f"{diff:.3g}"),
            **({"missing_weights": missing[:5]} if missing else {})}


def _tensor(value):
    """A tensor from a numpy array (GGUF's expected weights) or a tensor (a merged export's)."""
    import torch

    return value.float().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(value)


def _first_difference(ref: Reference, got: list[list[int]]) -> dict[str, Any] | None:
    for i, (a, b) in enumerate(zip(ref.answers, got)):
        if a != b:
            return {"prompt": i, "at_token": _common_prefix(a, b), "expected": a[:40], "got": b[:40]}
    return None


def require(checks: list[dict[str, Any]], what: str) -> None:
    """ExportError when a check differs (a broken export is never reported done)."""
    bad = [c for c in checks if c.get("status") in ("differs", "failed")]
    if bad:
        c = bad[0]
        detail = c.get("error") or (f"{c.get('exact_matches')}/{c.get('prompts')} answers match, token agreement "
                                    f"{c.get('token_agreement')}")
        if c.get("teacher_forced_top1") is not None:
            detail += f", teacher-forced top-1 {c['teacher_forced_top1']}"
        if c.get("problems"):
            detail = "; ".join(c["problems"])
        raise ExportError(f"{what} did not verify through {c['loader']}: {detail}",
                          "nothing was written; run with --debug and report this as a bug")


def tokenizer_check(original, reloaded, prompts: list[list[dict]]) -> dict[str, Any]:
    """Does the reloaded tokenizer keep the chat template and encode the rendered prompts the same?"""
    from tunesmith.data.render import ensure_chat_template, render_prompt

    same_template = ensure_chat_template(original) == getattr(reloaded, "chat_template", None)
    texts = [original.decode(render_prompt(p, original)) for p in prompts]
    same_ids = all(original(t, add_special_tokens=False)["input_ids"] == reloaded(t, add_special_tokens=False)["input_ids"]
                   for t in texts)
    return {"chat_template_match": same_template, "prompt_ids_match": same_ids}
