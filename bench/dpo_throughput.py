"""DPO throughput and memory: TRL DPOTrainer + PEFT (a) against tunesmith's DPO (b), one run.

    python bench/dpo_throughput.py            # the embedded SmolLM2-135M, 1 run a side (--repeats N: interleaved)
    python bench/dpo_throughput.py --quick    # a tiny 2-layer model, 1 repeat (CI smoke run)

Both sides train the same model on the same preference pairs built from the bundled support FAQ
(chosen = the FAQ's answer, rejected = the answer of another FAQ question drawn with a seeded
RNG; the system prompt and the question are the prompt), given to both as the same TRL
conversational file (`{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`,
so both render through the model's chat template). Same LoRA settings (r 16, alpha 32, dropout
0.05, all-linear), DPO sigmoid loss with beta 0.1, AdamW lr 2e-4 with the same cosine schedule
and warm-up, 8 pairs per optimizer step, no accumulation, fp32, no gradient checkpointing, and
exactly one epoch (every pair seen once). Both compute the reference log-probabilities once
before the first step from the starting model (TRL: `precompute_ref_log_probs=True`; with PEFT
the adapter is disabled for it; tunesmith always does this), and both disable dropout, so the
policy equals the reference at step 0 and the first-step loss is log 2 on both sides.

Each side runs in its own subprocess so its peak RSS is its own. Printed per side: first-step
loss, useful tokens/s, padding waste %, peak RSS, final training loss, seconds; then the
same-math checks, the ratios b/a and, last, one line:

    RESULT first_loss_delta=<|b-a|> tokens_per_s_ratio=<b/a> peak_rss_ratio=<b/a> final_loss_delta=<(b-a)/a, %>

Useful tokens: for every pair a side trains on, the real (non-padding) tokens of its prompt
(counted once), its chosen answer and its rejected answer, counted from each side's own batches
(TRL: the prompt_ids + chosen_ids + rejected_ids of each example its collator receives;
tunesmith: the non-padding tokens of its rows, where a pair's prompt is stored once); a prompt
TRL runs twice (once before each answer) and padding count once and zero times. Time: the
reference precompute over the training pairs plus the sum of the optimizer steps' time (TRL:
its `_precompute_ref_logps` call for the train set, which also caches the values in a dataset
column, plus `on_step_begin`..`on_step_end`; tunesmith: its `reference_logps` call for the
train split, timed by wrapping it, plus the loop's step timer). Tokenising, model loading,
validation and saving are excluded on both. Peak RSS: the child's VmHWM right after training.

Final training loss: the mean DPO loss over every training pair after training, scored by the
same code for both sides (tunesmith's `score_pairs`: eval mode, fp32, tunesmith's renderer),
against the same reference (the base log-probabilities tunesmith computed), so it depends on
neither side's batch order nor its tokenisation.

Same math: TRL trains one more token per answer than tunesmith (its completion is everything
the chat template writes after the prompt, including the newline after `<|im_end|>`; tunesmith
trains the answer and `<|im_end|>`). The step-0 log-probabilities of every pair are compared
(both sides' precomputed reference = the policy at step 0), and again for the first pairs with
TRL's own `compute_ref_log_probs` restricted to the tokens tunesmith trains: that is the check
that both compute the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import _peak_rss_mb, _write, tiny_model  # noqa: E402  (the same tiny model, RSS reading, JSONL writer)
from train_throughput import run_child as _run_child  # noqa: E402  (the same child runner)

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "examples" / "support-faq" / "faq.jsonl"
SYSTEM = "You answer customers' questions about building permits and construction in Sweden."
BATCH = 8  # pairs per optimizer step, both sides (4 with --quick)
LR = 2e-4  # tunesmith's LoRA learning rate; TRL's DPO default (1e-6) is for full fine-tuning
WARMUP = 0.05  # tunesmith's default warm-up ratio, given to TRL as steps (ceil) so both schedules match
BETA = 0.1  # DPO's beta: both sides' default
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
MAX_LENGTH = 1024  # TRL's default max_length and tunesmith's data.max_length (no pair comes near it)
CHECK_PAIRS = 32  # pairs scored again by TRL's own code on tunesmith's trained tokens


# ------------------------------------------------------------------ data


def build_data(folder: Path, *, n_pairs: int, seed: int) -> dict[str, Path]:
    """Train / validation / test pair files (TRL's conversational preference format, read by both sides).

    A pair: system + the FAQ question as the prompt, its answer chosen, the answer of another
    question (seeded draw) rejected. 4 validation and 4 test pairs are held out (tunesmith is given
    them, so it trains every train pair; TRL gets no evaluation set).
    """
    rows = [json.loads(line) for line in FAQ.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    seen, pairs = set(), []
    for i, row in enumerate(rows):
        question = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        other = rows[(i + rng.randrange(1, len(rows))) % len(rows)]["output"]
        key = (question, row["output"], other)
        if row["output"].split() == other.split() or key in seen:  # tunesmith refuses identical answers
            continue
        seen.add(key)
        pairs.append({"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                      "chosen": [{"role": "assistant", "content": row["output"]}],
                      "rejected": [{"role": "assistant", "content": other}]})
    if len(pairs) < n_pairs + 8:
        raise SystemExit(f"the FAQ gives {len(pairs)} pairs; ask for at most {len(pairs) - 8}")
    folder.mkdir(parents=True, exist_ok=True)
    return {"train": _write(folder / "train.jsonl", pairs[8 : 8 + n_pairs]),
            "validation": _write(folder / "validation.jsonl", pairs[:4]),
            "test": _write(folder / "test.jsonl", pairs[4:8])}


def read_pairs(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def canonical(pair: dict) -> dict:
    """A TRL conversational pair -> tunesmith's canonical pair ({messages: prompt, chosen, rejected})."""
    return {"messages": pair["prompt"], "chosen": pair["chosen"][0]["content"],
            "rejected": pair["rejected"][0]["content"]}


def pair_key(example: dict) -> str:
    """Which pair this is, from a canonical pair (tunesmith's prepared rows carry the same texts)."""
    return json.dumps([example["messages"][-1]["content"], example["chosen"], example["rejected"]])


# ------------------------------------------------------------------ the two sides (each in a child process)


def run_trl(spec: dict) -> dict:
    """(a) TRL DPOTrainer + PEFT, reference precomputed, fp32, no gradient checkpointing."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(spec["threads"])
    rows = read_pairs(spec["files"]["train"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = DPOConfig(
        output_dir=spec["workdir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="cosine",
        warmup_steps=math.ceil(WARMUP * spec["steps"]), max_length=MAX_LENGTH,
        beta=BETA, loss_type=["sigmoid"], disable_dropout=True,  # both TRL's defaults, named for clarity
        precompute_ref_log_probs=True,  # as tunesmith: once before the first step, no reference pass per step
        precompute_ref_batch_size=spec["batch"],  # tunesmith's reference pass takes train.batch_size pairs at a time
        padding_free=False,  # the default; "temporarily unavailable" in TRL 1.16 (falls back to padding)
        gradient_checkpointing=False, bf16=False,  # TRL's defaults are True; tunesmith uses neither on a CPU
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        seed=spec["seed"], data_seed=spec["seed"], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    reference = _timed(DPOTrainer, "_precompute_ref_logps")  # measures only; TRL's own method runs
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    counts = {"tokens": 0, "slots": 0, "attended": 0}
    collator = trainer.data_collator
    trainer.data_collator = _counting(collator, counts)  # measures only; TRL's own collator runs

    class Clock(TrainerCallback):
        seconds, started, logs = 0.0, 0.0, []

        def on_step_begin(self, *a, **k):
            Clock.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            Clock.seconds += time.perf_counter() - Clock.started

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                Clock.logs.append(dict(logs))

    trainer.add_callback(Clock)
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall
    peak = _peak_rss_mb()
    first = Clock.logs[0]
    data = trainer.train_dataset
    ref = [(c, r) for c, r in zip(data["ref_chosen_logps"], data["ref_rejected_logps"])]
    canon = [canonical(r) for r in rows]
    return {**counts, "seconds": reference["train"] + Clock.seconds, "reference_seconds": reference["train"],
            "step_seconds": Clock.seconds, "wall_seconds": wall, "peak_rss_mb": peak, "first_loss": first["loss"],
            "first_logps": (first.get("logps/chosen"), first.get("logps/rejected")),
            "last_step_loss": Clock.logs[-1]["loss"],
            "reference": {pair_key(c): lp for c, lp in zip(canon, ref)},
            "answer_tokens": [(len(c), len(r)) for c, r in zip(data["chosen_ids"], data["rejected_ids"])],
            "check": _trl_on_tunesmith_tokens(trainer, collator, tokenizer, data, canon[:CHECK_PAIRS]),
            "final": _final_logps(trainer.model, tokenizer, canon)}


def _timed(cls, name: str) -> dict[str, float]:
    """Wrap cls.name(self, dataset, split_name, ...) to add its seconds per split name to the returned dict."""
    spent: dict[str, float] = {}
    original = getattr(cls, name)

    def timed(self, dataset, split, *a, **k):
        start = time.perf_counter()
        out = original(self, dataset, split, *a, **k)
        spent[split] = spent.get(split, 0.0) + time.perf_counter() - start
        return out

    setattr(cls, name, timed)
    return spent


def _counting(collator, counts: dict):
    def collate(features):
        batch = collator(features)
        counts["tokens"] += sum(len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)
        counts["attended"] += int(batch["attention_mask"].sum())  # the prompt twice, no padding
        counts["slots"] += batch["input_ids"].numel()
        return batch

    return collate


def _trl_on_tunesmith_tokens(trainer, collator, tokenizer, data, examples: list[dict]) -> dict:
    """TRL's own `compute_ref_log_probs` (adapter disabled: the base) on the first pairs, its completion
    mask cut to the tokens tunesmith trains; also whether those are a prefix of TRL's completion."""
    import torch

    from tunesmith.data.render import render_pair

    features, prefix = [], 0
    for i, example in enumerate(examples):
        pair = render_pair(example, tokenizer, max_length=MAX_LENGTH)
        trained = [[t for t, m in zip(ids, mask) if m] for ids, mask in
                   ((pair.chosen, pair.chosen_mask), (pair.rejected, pair.rejected_mask))]
        row = {k: data[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        same = row["prompt_ids"] == pair.prompt and all(
            row[side][: len(t)] == t for side, t in zip(("chosen_ids", "rejected_ids"), trained))
        prefix += same
        features.append({"prompt_ids": row["prompt_ids"], "chosen_ids": row["chosen_ids"][: len(trained[0])],
                         "rejected_ids": row["rejected_ids"][: len(trained[1])]})
    batch = {k: v.to(trainer.accelerator.device) for k, v in collator(features).items()}
    trainer.model.eval()
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    return {"pairs": len(examples), "same_tokens": prefix,
            "reference": {pair_key(e): (float(c), float(r)) for e, c, r in zip(examples, chosen, rejected)}}


def _final_logps(model, tokenizer, examples: list[dict]) -> dict[str, tuple[float, float]]:
    """Summed log-probabilities of (chosen, rejected) of every pair under the trained model (tunesmith's code)."""
    from tunesmith.train.preference import score_pairs

    model = model.float().to("cpu").eval()
    scores = score_pairs(model, tokenizer, examples, batch_size=BATCH, max_length=MAX_LENGTH)
    return {pair_key(e): (c, r) for e, (c, r, _, _) in zip(examples, scores)}


def run_tunesmith(spec: dict) -> dict:
    """(b) tunesmith's DPO: `tunesmith.train.finetune(config)`, defaults except the shared settings."""
    import torch

    from tunesmith.config import load_config
    from tunesmith.data.render import render_pair
    from tunesmith.runs.deliverable import load_run
    from tunesmith.train import preference
    from tunesmith.train.finetune import finetune

    torch.set_num_threads(spec["threads"])
    files = spec["files"]
    overrides = [
        f"model={spec['model']}", f"data.train={files['train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", "data.near_duplicates=keep", f"data.max_length={MAX_LENGTH}",
        "method.name=dpo", "method.weights=lora", f"method.beta={BETA}", "method.loss=sigmoid",
        f"method.r={LORA['r']}", f"method.alpha={LORA['alpha']}", f"method.dropout={LORA['dropout']}",
        f"method.target_modules={LORA['target_modules']}", f"train.batch_size={spec['batch']}", f"train.lr={LR}",
        f"train.max_steps={spec['steps']}", f"train.warmup_ratio={WARMUP}", "train.schedule=cosine",
        f"train.seed={spec['seed']}", f"train.threads={spec['threads']}", f"train.eval_every={spec['steps']}",
        f"train.save_every={spec['steps']}", "train.sample_answers=0", f"output_dir={spec['workdir']}",
    ]
    cfg = load_config(None, overrides)
    reference = _timed_calls(preference, "reference_logps")  # measures only; tunesmith's own function runs
    seen: dict = {}

    def on_step(state, metrics) -> bool:
        seen.setdefault("first", dict(metrics))
        seen["state"], seen["loss"] = state, metrics.get("loss")
        return False

    wall = time.perf_counter()
    run = finetune(cfg, on_step=on_step, show_progress=False)
    wall = time.perf_counter() - wall
    peak = _peak_rss_mb()
    state, first = seen["state"], seen["first"]
    reference_seconds = reference[0]  # the train split's call (the validation pairs' call comes second)
    rows = [json.loads(line) for line in (run.dir / "data" / "train.jsonl").read_text().splitlines()]
    saved = json.loads((run.dir / preference.REFERENCE_FILE).read_text())["train"]
    assert len(rows) == len(saved), (len(rows), len(saved))
    model, tokenizer = load_run(run.dir, device="cpu")
    train = [canonical(p) for p in read_pairs(files["train"])]
    pairs = [render_pair(e, tokenizer, max_length=MAX_LENGTH) for e in train]
    return {"tokens": state.tokens, "slots": state.slots, "attended": state.tokens,
            "seconds": reference_seconds + state.train_seconds, "reference_seconds": reference_seconds,
            "step_seconds": state.train_seconds, "wall_seconds": wall, "peak_rss_mb": peak,
            "first_loss": first["loss"], "first_logps": (first.get("chosen_logp"), first.get("rejected_logp")),
            "last_step_loss": seen["loss"],
            "reference": {pair_key(r): tuple(lp) for r, lp in zip(rows, saved)},
            "answer_tokens": [(sum(p.chosen_mask), sum(p.rejected_mask)) for p in pairs],
            "final": _final_logps(model, tokenizer, train)}


def _timed_calls(module, name: str) -> list[float]:
    """Wrap module.name to append the seconds of each call to the returned list."""
    spent: list[float] = []
    original = getattr(module, name)

    def timed(*a, **k):
        start = time.perf_counter()
        out = original(*a, **k)
        spent.append(time.perf_counter() - start)
        return out

    setattr(module, name, timed)
    return spent


# ------------------------------------------------------------------ the parent: interleaved runs, medians


def run_child(side: str, spec: dict, workdir: Path) -> dict:
    """One side in a fresh interpreter, through train_throughput's runner (its max RSS from wait4)."""
    return _run_child(side, spec, workdir, script=__file__)


def dpo_loss(final: dict, reference: dict) -> float:
    """Mean -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over the pairs of `reference`."""
    losses = []
    for key, (ref_c, ref_r) in reference.items():
        pi_c, pi_r = final[key]
        z = BETA * ((pi_c - ref_c) - (pi_r - ref_r))
        losses.append(math.log1p(math.exp(-z)) if z > -30 else -z)
    return sum(losses) / len(losses)


def summarise(result: dict, reference: dict) -> dict:
    return {
        "first_loss": result["first_loss"],
        "useful_tokens_per_s": result["tokens"] / result["seconds"],
        "padding_waste_pct": 100 * (1 - result["attended"] / result["slots"]),
        "peak_rss_mb": result["peak_rss_mb"],
        "final_loss": dpo_loss(result["final"], reference),
        "seconds": result["seconds"],
        "reference_seconds": result["reference_seconds"],
        "tokens": result["tokens"],
    }


HEADER = (f"  {'side':<12} {'first loss':>10} {'useful/s':>9} {'waste %':>8} {'peak MB':>8} {'final loss':>10} "
          f"{'train s':>8} {'ref s':>6} {'useful':>7}")


def print_row(label: str, s: dict) -> None:
    print(f"  {label:<12} {s['first_loss']:>10.6f} {s['useful_tokens_per_s']:>9.1f} {s['padding_waste_pct']:>8.1f} "
          f"{s['peak_rss_mb']:>8.0f} {s['final_loss']:>10.4f} {s['seconds']:>8.1f} {s['reference_seconds']:>6.1f} "
          f"{s['tokens']:>7}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny 2-layer model, 16 pairs, 1 repeat (smoke run)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pairs", type=int, help="training pairs, one epoch (default 64, or 16 with --quick)")
    p.add_argument("--model", help="a local model folder instead of the embedded SmolLM2-135M-Instruct")
    p.add_argument("--json", help="also write every result to this file")
    p.add_argument("--child", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        spec = json.loads(Path(a.spec).read_text())
        result = run_trl(spec) if a.child == "trl" else run_tunesmith(spec)
        Path(a.out).write_text(json.dumps(result))
        return
    bench(a)


def bench(a) -> None:
    repeats = a.repeats or 1
    batch = 4 if a.quick else BATCH
    n_pairs = a.pairs or (16 if a.quick else 64)
    steps = n_pairs // batch  # one epoch: both sides see every pair once
    with tempfile.TemporaryDirectory(prefix="tunesmith-dpo-bench-") as tmp:
        tmp = Path(tmp)
        files = build_data(tmp / "data", n_pairs=steps * batch, seed=a.seed)
        if a.quick:
            model = str(tiny_model(tmp / "tiny-model"))
        elif a.model:
            model = a.model
        else:
            from tunesmith.models.load import local_folder

            model = str(local_folder("smollm2-135m-instruct"))
        spec = {"model": model, "files": {k: str(v) for k, v in files.items()}, "steps": steps, "batch": batch,
                "seed": a.seed, "threads": a.threads,
                "home": os.environ.get("TUNESMITH_HOME", str(Path.home() / ".tunesmith"))}
        print(f"model {model}\n{steps * batch} preference pairs, {steps} steps of {batch} pairs (one epoch), DPO sigmoid "
              f"beta {BETA}, LoRA r{LORA['r']} alpha {LORA['alpha']} {LORA['target_modules']}, {a.threads} threads, "
              f"{repeats} repeat(s)", flush=True)
        print(HEADER)
        runs: dict[str, list[dict]] = {"trl": [], "tunesmith": []}
        for r in range(repeats):
            order = ["trl", "tunesmith"] if r % 2 == 0 else ["tunesmith", "trl"]  # alternating who goes first
            for side in order:
                runs[side].append(run_child(side, spec, tmp / f"{side}-{r}"))
        reference = runs["tunesmith"][0]["reference"]  # the base's log-probs by tunesmith's code: the final loss's
        results = {side: [summarise(x, reference) for x in xs] for side, xs in runs.items()}
        for r in range(repeats):
            for side in (["trl", "tunesmith"] if r % 2 == 0 else ["tunesmith", "trl"]):
                print_row(f"{side}#{r + 1}", results[side][r])
        same_math(runs["trl"][0], runs["tunesmith"][0])
        report(results, runs, a.json)


def same_math(trl: dict, ts: dict) -> None:
    """Print how the two sides' trained tokens and step-0 log-probabilities compare, pair by pair."""
    mean = statistics.fmean
    print("same math (step 0 = the reference: both sides' precomputed log-probs of every training pair)")
    for i, side in enumerate(("chosen", "rejected")):
        extra = [a[i] - b[i] for a, b in zip(trl["answer_tokens"], ts["answer_tokens"])]
        print(f"  trained tokens per {side} answer: TRL {mean(a[i] for a in trl['answer_tokens']):.2f}, tunesmith "
              f"{mean(b[i] for b in ts['answer_tokens']):.2f} (TRL - tunesmith: {min(extra)}..{max(extra)})")
    keys = sorted(ts["reference"])
    for i, side in enumerate(("chosen", "rejected")):
        diff = [trl["reference"][k][i] - ts["reference"][k][i] for k in keys]
        print(f"  {side} log-prob, TRL - tunesmith, all {len(keys)} pairs: mean {mean(diff):+.4f}, "
              f"max |.| {max(map(abs, diff)):.4f} (TRL's extra token)")
    check = trl["check"]
    diffs = [abs(check["reference"][k][i] - ts["reference"][k][i]) for k in check["reference"] for i in (0, 1)]
    print(f"  TRL's compute_ref_log_probs on tunesmith's trained tokens ({check['pairs']} pairs, tunesmith's tokens "
          f"a prefix of TRL's in {check['same_tokens']}): max |TRL - tunesmith| {max(diffs):.2e}")
    print(f"  first step, mean over each side's own first batch: logps/chosen TRL {trl['first_logps'][0]:.3f}, "
          f"tunesmith {ts['first_logps'][0]:.3f}; logps/rejected TRL {trl['first_logps'][1]:.3f}, "
          f"tunesmith {ts['first_logps'][1]:.3f} (different pairs: the order differs)")


def report(results: dict[str, list[dict]], runs: dict, json_path: str | None) -> None:
    medians = {side: {k: statistics.median(s[k] for s in xs) for k in xs[0]} for side, xs in results.items()}
    print("medians:")
    for side, m in medians.items():
        print_row(side, m)
    if json_path:
        slim = {side: [{k: v for k, v in x.items() if k not in ("reference", "final", "check")} for x in xs]
                for side, xs in runs.items()}
        Path(json_path).write_text(json.dumps({"results": results, "medians": medians, "runs": slim}, indent=2))
    a, b = medians["trl"], medians["tunesmith"]
    first = abs(b["first_loss"] - a["first_loss"])
    speed = b["useful_tokens_per_s"] / a["useful_tokens_per_s"]
    rss = b["peak_rss_mb"] / a["peak_rss_mb"]
    delta = 100 * (b["final_loss"] - a["final_loss"]) / a["final_loss"]
    print(f"ratios b/a: useful tokens/s {speed:.2f}x, peak RSS {rss:.2f}x; first-step loss {b['first_loss']:.6f} vs "
          f"{a['first_loss']:.6f} (log 2 = {math.log(2):.6f}); final loss {delta:+.2f}%; padding waste "
          f"{b['padding_waste_pct']:.1f}% (a: {a['padding_waste_pct']:.1f}%)")
    print(f"RESULT first_loss_delta={first:.6f} tokens_per_s_ratio={speed:.3f} peak_rss_ratio={rss:.3f} "
          f"final_loss_delta={delta:.3f}")


if __name__ == "__main__":
    main()
