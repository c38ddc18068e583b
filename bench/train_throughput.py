"""Training throughput and memory: TRL SFTTrainer + PEFT (a) against tunesmith's default path (b), one run.

    python bench/train_throughput.py            # the embedded SmolLM2-135M, 3 interleaved repeats
    python bench/train_throughput.py --quick    # a tiny 2-layer model, 1 repeat (CI smoke run)
    python bench/train_throughput.py --random-weights   # SmolLM2-135M's shape, random weights (a GPU box
                                                        # without the model file: speed and memory only)
    python bench/train_throughput.py --shape llama-3.2-1b   # Llama-3.2-1B's shape (config.json's numbers),
                                                            # random weights: issue 15's 1B-class target

On a CUDA machine both sides train on the GPU with their defaults there (TRL: bf16 autocast and
gradient checkpointing; tunesmith: bf16, packed rows through SDPA, Liger kernels when installed)
and the peak GPU memory of each is printed too.

Both sides train the same model on the same examples (the bundled support FAQ plus longer
multi-turn conversations built from it, so lengths are skewed), with the same LoRA settings,
the same learning-rate schedule, 8 examples per optimizer step and the same number of steps:
exactly one epoch, so both have seen every training example once. Each side runs in its own
subprocess so its peak RSS is its own. Printed per side: useful (loss-bearing) tokens/s,
padding waste %, peak RSS, final training loss; then the ratios b/a and, last, one line:

    RESULT tokens_per_s_ratio=<b/a> peak_rss_ratio=<b/a> peak_gpu_ratio=<b/a, nan without CUDA>
           padding_waste=<b, %> loss_delta=<(b-a)/a, %> mfu=<b, %>/<a, %>

MFU (model FLOPs utilisation) is the model's training FLOPs per token, PaLM's convention
(6 x the parameters the tokens pass through, the input embedding left out, plus 12 x layers x
attention width x the mean example length for attention), times the real (non-padding) tokens
each side processed per second, over the device's peak: bf16 dense tensor-core FLOP/s of a
known GPU (GPU_PEAK below, or --peak-tflops), on a CPU a measured fp32 matmul. It is the same
formula for both sides, so the ratio of MFUs is the ratio of real tokens/s; LoRA skips the
frozen weights' gradients (about a third of that work), so neither side can reach 100%.

`--packed-attention dense,flex` runs tunesmith once per value of train.packed_attention
instead (interleaved, no TRL) and ends with one line comparing the second to the first:

    RESULT packed_attention=flex/dense tokens_per_s_ratio=<flex/dense> steady_ratio=<flex/dense>
           peak_gpu_ratio=<flex/dense> peak_rss_ratio=<flex/dense> padding_waste=<flex, %>/<dense, %>
           loss_delta=<(flex-dense)/dense, %>

steady_ratio is the useful tokens/s after the first WARM_STEPS steps (flex_attention compiles
its kernels in the first steps; a long run pays that once).

(one line; flex trains on CUDA only: on the CPU its side stops with train.packed_attention's
error, and `auto,dense` there runs the same path twice.)

"Final training loss" is the mean loss over every trained token of the training set, scored
after training with the same code for both sides (eval mode, tunesmith's renderer), so it
does not depend on the order either side drew the batches in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "examples" / "support-faq" / "faq.jsonl"
TOKENIZER_DIR = ROOT / "tests" / "assets" / "smollm2-tokenizer"
SYSTEM = "You answer customers' questions about building permits and construction in Sweden."
BATCH = 8  # examples per optimizer step, both sides (4 with --quick)
LR = 2e-4  # TRL's PEFT guide: LoRA wants ~1e-4..2e-4 (its 2e-5 default is for full fine-tuning); tunesmith's default
WARMUP = 0.05  # tunesmith's default warmup ratio, given to TRL as steps (ceil) so both schedules are identical
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
MAX_LENGTH = 1024  # TRL's default max_length and tunesmith's data.max_length
WARM_STEPS = 2  # tunesmith's steady tokens/s counts the steps after these (flex_attention compiles in the first)


# bf16 dense (no sparsity) tensor-core peak FLOP/s by the name torch gives the device (first match wins)
GPU_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
            "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12}

# Random-weight model shapes (--shape): each its config.json's numbers; the SmolLM2 tokenizer's ids
# fit every vocabulary here, and a larger vocabulary keeps the logits' real cost.
SHAPES = {
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M-Instruct
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B(-Instruct)
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True),
}


# ------------------------------------------------------------------ data


def build_data(folder: Path, *, n_faq: int, n_long: int, max_turns: int, seed: int) -> dict[str, Path]:
    """Train / validation / test files in both sides' formats; every conversation trains its last answer only.

    TRL's prompt/completion format trains the completion (the last assistant turn); tunesmith gets
    the same conversations with weight 0 on earlier assistant turns, so both train the same tokens.
    """
    rows = [json.loads(line) for line in FAQ.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    pairs = [(r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""), r["output"]) for r in rows]
    held_out, pool = pairs[:8], pairs[8:]
    train = [_conversation([p]) for p in pool[:n_faq]]
    for _ in range(n_long):  # 3..max_turns questions in one conversation: the long tail
        train.append(_conversation(rng.sample(pool, rng.randint(3, max_turns))))
    rng.shuffle(train)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "ts_train": _write(folder / "train.tunesmith.jsonl", [{"messages": m} for m in train]),
        "trl_train": _write(folder / "train.trl.jsonl", [_prompt_completion(m) for m in train]),
        "validation": _write(folder / "validation.jsonl", [{"messages": _conversation([p])} for p in held_out[:4]]),
        "test": _write(folder / "test.jsonl", [{"messages": _conversation([p])} for p in held_out[4:]]),
    }
    return files


def _conversation(pairs: list[tuple[str, str]]) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, (question, answer) in enumerate(pairs):
        last = i == len(pairs) - 1
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer, **({} if last else {"weight": 0})})
    return messages


def _prompt_completion(messages: list[dict]) -> dict:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": plain[:-1], "completion": plain[-1:]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def random_model(folder: Path, shape: str) -> Path:
    """A Llama of SHAPES[shape] with seeded random weights, stored in bf16 (as the hub's are), real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1B init takes a while on a CPU
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def flops_per_token(model: str, mean_length: float) -> float:
    """Training FLOPs per token of the model folder `model`, PaLM's convention (see the docstring: MFU)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    c = getattr(c, "text_config", c)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    attention = c.hidden_size * head_dim * (c.num_attention_heads * 2 + kv * 2)  # q, o; k, v
    mlp = 3 * c.hidden_size * c.intermediate_size  # gate, up, down
    params = c.num_hidden_layers * (attention + mlp) + c.vocab_size * c.hidden_size  # + the output projection
    return 6 * params + 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * mean_length


def peak_flops(override_tflops: float | None) -> tuple[float, str]:
    """The device's peak FLOP/s and what it is: --peak-tflops, a known GPU's bf16 dense peak, a CPU matmul."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (--peak-tflops)"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_PEAK.items() if k in name), None)
        return (peak or math.nan), (f"{name}: {peak / 1e12:g} TFLOP/s bf16 dense" if peak
                                    else f"{name}: peak unknown, pass --peak-tflops")
    from tunesmith.train.progress import _matmul_rate

    rate = _matmul_rate("cpu", "float32")
    return rate, f"CPU: {rate / 1e9:.0f} GFLOP/s, a measured fp32 matmul ({torch.get_num_threads()} threads)"


def tiny_model(folder: Path) -> Path:
    """A 2-layer, hidden-64 Llama with the real SmolLM2 tokenizer (the --quick model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ the two sides (each in a child process)


def run_trl(spec: dict) -> dict:
    """(a) TRL SFTTrainer + PEFT, set up as TRL's docs tell a user for prompt/completion data."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    rows = [json.loads(line) for line in Path(spec["files"]["trl_train"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = SFTConfig(
        output_dir=spec["workdir"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",  # tunesmith's default schedule, so both follow the same learning rates
        warmup_steps=math.ceil(WARMUP * spec["steps"]),
        max_length=MAX_LENGTH,  # TRL's default, named for clarity
        completion_only_loss=None,  # the default: loss on the completion only, for prompt/completion data
        packing=False,  # docs: packing (bfd) implies padding_free, which needs FlashAttention 2/3 (not on CPU)
        padding_free=False,  # docs: "only supported with FlashAttention 2 or 3"; on CPU examples would attend across
        gradient_checkpointing=spec["trl_gradient_checkpointing"],  # TRL's default is True
        bf16=spec["trl_bf16"],  # TRL's default is True (autocast to bf16; this CPU has avx512_bf16)
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        seed=spec["seed"], data_seed=spec["seed"], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    counts = {"tokens": 0, "slots": 0, "loss_tokens": 0}
    trainer.data_collator = _counting(trainer.data_collator, counts)  # measures only; TRL's own collator runs

    class Clock(TrainerCallback):
        seconds, started, losses = 0.0, 0.0, []

        def on_step_begin(self, *a, **k):
            Clock.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            Clock.seconds += time.perf_counter() - Clock.started

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                Clock.losses.append(float(logs["loss"]))

    trainer.add_callback(Clock)
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall
    peak = _peak_rss_mb()
    model = trainer.model.eval()
    return {**counts, "seconds": Clock.seconds, "wall_seconds": wall, "peak_rss_mb": peak, "peak_gpu_mb": _peak_gpu_mb(),
            "last_step_loss": Clock.losses[-1] if Clock.losses else None,
            "final_loss": score(model, tokenizer, spec["files"]["ts_train"])}


def _counting(collator, counts: dict):
    def collate(features):
        batch = collator(features)
        counts["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        counts["slots"] += batch["input_ids"].numel()
        counts["loss_tokens"] += int((batch["labels"][:, 1:] != -100).sum())
        return batch

    return collate


def run_tunesmith(spec: dict) -> dict:
    """(b) tunesmith's default training path: `tunesmith.train.finetune(config)`, defaults except the shared settings."""
    import torch

    from tunesmith.config import load_config
    from tunesmith.runs.deliverable import load_run
    from tunesmith.train.finetune import finetune

    torch.set_num_threads(spec["threads"])
    files = spec["files"]
    overrides = [
        f"model={spec['model']}", f"data.train={files['ts_train']}", f"data.validation={files['validation']}",
        f"data.test={files['test']}", "data.near_duplicates=keep", f"data.max_length={MAX_LENGTH}",
        f"method.r={LORA['r']}", f"method.alpha={LORA['alpha']}", f"method.dropout={LORA['dropout']}",
        f"method.target_modules={LORA['target_modules']}", f"train.batch_size={spec['batch']}", f"train.lr={LR}",
        f"train.max_steps={spec['steps']}", f"train.warmup_ratio={WARMUP}", "train.schedule=cosine",
        f"train.seed={spec['seed']}", f"train.threads={spec['threads']}", f"train.eval_every={spec['steps']}",
        f"train.save_every={spec['steps']}", f"output_dir={spec['workdir']}", *spec["ts_overrides"],
    ]
    cfg = load_config(None, overrides)
    seen: dict = {}

    def on_step(state, metrics) -> bool:
        seen["state"], seen["loss"] = state, metrics.get("loss")
        if state.step == WARM_STEPS:  # the steady rate leaves out compiling (flex_attention) and warm-up
            seen["warm"] = {"warm_seconds": state.train_seconds, "warm_loss_tokens": state.loss_tokens}
        return False

    wall = time.perf_counter()
    run = finetune(cfg, on_step=on_step, show_progress=False, loss_fn=_loss_lever(spec))
    wall = time.perf_counter() - wall
    peak = _peak_rss_mb()
    state = seen["state"]
    model, tokenizer = load_run(run.dir, device="cpu")
    return {"tokens": state.tokens, "slots": state.slots, "loss_tokens": state.loss_tokens,
            "seconds": state.train_seconds, "wall_seconds": wall, "peak_rss_mb": peak, "peak_gpu_mb": _peak_gpu_mb(),
            "last_step_loss": seen["loss"], "final_loss": score(model.eval(), tokenizer, files["ts_train"]),
            **seen.get("warm", {})}


def _loss_lever(spec: dict):
    """--ts-loss plain: the full-logits reference loss, to price the default's chunked one (bench/RESULTS.md)."""
    if spec.get("ts_loss") == "plain":
        from tunesmith.train.loss import plain_loss

        return plain_loss
    return None


def score(model, tokenizer, path: str) -> float:
    """Mean next-token loss over every trained token of the examples in `path` (both sides, same code)."""
    import torch

    from tunesmith.data.render import render
    from tunesmith.train.loss import causal_lm_eval
    from tunesmith.train.batching import collate_padded

    examples = [render(json.loads(line)["messages"], tokenizer) for line in Path(path).read_text().splitlines()]
    model = model.float().to("cuda" if torch.cuda.is_available() else "cpu")  # both sides: fp32, same device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), BATCH):
            batch = collate_padded(examples[start : start + BATCH], tokenizer.pad_token_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            loss, n, _ = causal_lm_eval(model, batch)
            total, count = total + float(loss), count + int(n)
    return total / count


def _peak_gpu_mb() -> float | None:
    """Peak GPU memory torch allocated in this process, in MB (None without CUDA); read before scoring."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _peak_rss_mb() -> float:
    """This process's high-water resident set size (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ the parent: interleaved runs, medians


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_child(side: str, spec: dict, workdir: Path, script: str = __file__) -> dict:
    """Run one side (`script --child SIDE`) in a fresh interpreter; its result, plus the child's own max RSS from wait4.

    The benchmarks under bench/ share it: each passes its own `script`.
    """
    spec = {**spec, "workdir": str(workdir)}
    spec_path, out_path = workdir / "spec.json", workdir / "result.json"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "datasets-cache"),
           "TUNESMITH_HOME": spec["home"],
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, script, "--child", side, "--spec", str(spec_path), "--out", str(out_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out_path.is_file():
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"{side} side failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["child_maxrss_mb"] = usage.ru_maxrss / 1024
    return result


def summarise(result: dict) -> dict:
    summary = {
        "useful_tokens_per_s": result["loss_tokens"] / result["seconds"],
        "real_tokens_per_s": result["tokens"] / result["seconds"],
        "tokens": result["tokens"],
        "padding_waste_pct": 100 * (1 - result["tokens"] / result["slots"]),
        "peak_rss_mb": result["peak_rss_mb"],
        "peak_gpu_mb": result.get("peak_gpu_mb") or 0.0,
        "final_loss": result["final_loss"],
        "seconds": result["seconds"],
        "loss_tokens": result["loss_tokens"],
    }
    if "warm_seconds" in result and result["seconds"] > result["warm_seconds"]:  # tunesmith, past WARM_STEPS
        summary["steady_tokens_per_s"] = ((result["loss_tokens"] - result["warm_loss_tokens"])
                                          / (result["seconds"] - result["warm_seconds"]))
    return summary


def print_row(label: str, s: dict) -> None:
    print(f"  {label:<10} {s['useful_tokens_per_s']:>10.1f} {s['padding_waste_pct']:>9.1f} "
          f"{s['peak_rss_mb']:>9.0f} {s['final_loss']:>10.4f} {s['seconds']:>8.1f} {s['loss_tokens']:>8}"
          + (f" {s['peak_gpu_mb']:>8.0f}" if s["peak_gpu_mb"] else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny 2-layer model, few examples, 1 repeat (smoke run)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3, or 1 with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--faq", type=int, help="single-turn FAQ examples (default 96, or 3 with --quick)")
    p.add_argument("--long", type=int, help="long multi-turn conversations (default 24, or 1 with --quick)")
    p.add_argument("--model", help="a local model folder instead of the embedded SmolLM2-135M-Instruct")
    p.add_argument("--random-weights", action="store_true",
                   help="SmolLM2-135M's shape with random weights (no model file needed; speed and memory only)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="this model shape with random weights (as --random-weights)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: known GPUs' bf16 "
                   "dense peak, on a CPU a measured matmul)")
    p.add_argument("--trl-fp32", action="store_true", help="TRL without its bf16 default (a faster peer on CPUs without bf16)")
    p.add_argument("--trl-no-checkpointing", action="store_true", help="TRL without its gradient-checkpointing default")
    p.add_argument("--ts-set", action="append", default=[], help="extra tunesmith config override (lever measurements)")
    p.add_argument("--ts-loss", choices=["default", "plain"], default="default", help="lever: the plain full-logits loss")
    p.add_argument("--sides", default="trl,tunesmith", help="which sides to run (lever sweeps may skip one)")
    p.add_argument("--packed-attention", help="lever: tunesmith once per train.packed_attention value, e.g. dense,flex "
                   "(replaces --sides); the RESULT line compares the second to the first")
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
    repeats = a.repeats or (1 if a.quick else 3)
    n_faq, n_long = a.faq or (3 if a.quick else 96), a.long or (1 if a.quick else 24)
    batch = 4 if a.quick else BATCH
    steps = (n_faq + n_long) // batch  # one epoch: both sides see every example once
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        tmp = Path(tmp)
        files = build_data(tmp / "data", n_faq=n_faq, n_long=n_long, max_turns=3 if a.quick else 8, seed=a.seed)
        if a.quick:
            model = str(tiny_model(tmp / "tiny-model"))
        elif a.shape or a.random_weights:
            model = str(random_model(tmp / f"random-{a.shape or 'smollm2-135m'}", a.shape or "smollm2-135m"))
        elif a.model:
            model = a.model
        else:
            from tunesmith.models.load import local_folder

            model = str(local_folder("smollm2-135m-instruct"))
        spec = {"model": model, "files": {k: str(v) for k, v in files.items()}, "steps": steps, "batch": batch, "seed": a.seed,
                "threads": a.threads, "trl_bf16": not a.trl_fp32, "trl_gradient_checkpointing": not a.trl_no_checkpointing,
                "ts_overrides": a.ts_set, "ts_loss": a.ts_loss,
                "home": os.environ.get("TUNESMITH_HOME", str(Path.home() / ".tunesmith"))}
        print(f"model {model}\n{n_faq + n_long} training examples ({n_long} long multi-turn), {steps} steps of "
              f"{batch} examples, LoRA r{LORA['r']} alpha {LORA['alpha']} {LORA['target_modules']}, "
              f"{a.threads} threads, {repeats} repeat(s)", flush=True)
        print(f"  {'side':<10} {'useful/s':>10} {'waste %':>9} {'peak MB':>9} {'final loss':>10} {'train s':>8} {'trained':>8}"
              + (f" {'GPU MB':>8}" if _cuda() else ""))
        sides = _sides(a, spec)
        results: dict[str, list[dict]] = {label: [] for label in sides}
        for r in range(repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # interleaved, alternating who goes first
            for label in order:
                child, child_spec = sides[label]
                s = summarise(run_child(child, child_spec, tmp / f"{label}-{r}"))
                results[label].append(s)
                print_row(f"{label}#{r + 1}", s)
        runs = [r for rs in results.values() for r in rs]  # each run saw every example once (one epoch)
        mean_tokens = sum(r["tokens"] for r in runs) / (len(runs) * (n_faq + n_long))  # real tokens per example
        per_token, (peak, peak_what) = flops_per_token(model, mean_tokens), peak_flops(a.peak_tflops)
        for r in runs:
            r["mfu_pct"] = 100 * per_token * r["real_tokens_per_s"] / peak
        print(f"MFU: {per_token / 1e9:.2f} GFLOP per token (mean example {mean_tokens:.0f} tokens), peak {peak_what}")
        report(results, a.json, variants=bool(a.packed_attention))


def _sides(a, spec: dict) -> dict[str, tuple[str, dict]]:
    """label -> (child side, its spec): --sides as given, or one tunesmith side per --packed-attention value."""
    if not a.packed_attention:
        return {side: (side, spec) for side in a.sides.split(",")}
    return {value: ("tunesmith", {**spec, "ts_overrides": [*spec["ts_overrides"], f"train.packed_attention={value}"]})
            for value in a.packed_attention.split(",")}


def report(results: dict[str, list[dict]], json_path: str | None, variants: bool = False) -> None:
    medians = {side: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for side, runs in results.items()}
    print("medians:")
    for side, m in medians.items():
        print_row(side, m)
    print("MFU: " + ", ".join(f"{side} {m['mfu_pct']:.2f}%" for side, m in medians.items() if "mfu_pct" in m))
    if json_path:
        Path(json_path).write_text(json.dumps({"runs": results, "medians": medians}, indent=2))
    if variants and len(medians) == 2:
        report_variants(*medians.items())
    if not {"trl", "tunesmith"} <= medians.keys():
        return
    a, b = medians["trl"], medians["tunesmith"]
    speed = b["useful_tokens_per_s"] / a["useful_tokens_per_s"]
    rss = b["peak_rss_mb"] / a["peak_rss_mb"]
    delta = 100 * (b["final_loss"] - a["final_loss"]) / a["final_loss"]
    gpu = _gpu_ratio(b, a)
    if not math.isnan(gpu):
        print(f"peak GPU memory b/a: {gpu:.2f}x")
    print(f"ratios b/a: useful tokens/s {speed:.2f}x, peak RSS {rss:.2f}x; "
          f"padding waste {b['padding_waste_pct']:.1f}% (a: {a['padding_waste_pct']:.1f}%); final loss {delta:+.2f}%; "
          f"MFU {b.get('mfu_pct', math.nan):.1f}% (a: {a.get('mfu_pct', math.nan):.1f}%)")
    print(f"RESULT tokens_per_s_ratio={speed:.3f} peak_rss_ratio={rss:.3f} peak_gpu_ratio={gpu:.3f} "
          f"padding_waste={b['padding_waste_pct']:.2f} loss_delta={delta:.3f} "
          f"mfu={b.get('mfu_pct', math.nan):.2f}/{a.get('mfu_pct', math.nan):.2f}")


def _gpu_ratio(b: dict, a: dict) -> float:
    """Peak GPU memory of b over a's; nan where either side ran without CUDA."""
    return b["peak_gpu_mb"] / a["peak_gpu_mb"] if a["peak_gpu_mb"] and b["peak_gpu_mb"] else math.nan


def report_variants(first: tuple[str, dict], second: tuple[str, dict]) -> None:
    """The RESULT line of two tunesmith variants (--packed-attention A,B): B against A."""
    (a_name, a), (b_name, b) = first, second
    speed = b["useful_tokens_per_s"] / a["useful_tokens_per_s"]
    gpu = _gpu_ratio(b, a)
    steady = (b["steady_tokens_per_s"] / a["steady_tokens_per_s"] if "steady_tokens_per_s" in a.keys() & b.keys()
              else float("nan"))  # nan: a run of WARM_STEPS steps or fewer
    rss = b["peak_rss_mb"] / a["peak_rss_mb"]
    delta = 100 * (b["final_loss"] - a["final_loss"]) / a["final_loss"]
    print(f"RESULT packed_attention={b_name}/{a_name} tokens_per_s_ratio={speed:.3f} steady_ratio={steady:.3f} "
          f"peak_gpu_ratio={gpu:.3f} peak_rss_ratio={rss:.3f} "
          f"padding_waste={b['padding_waste_pct']:.2f}/{a['padding_waste_pct']:.2f} loss_delta={delta:.3f}")


if __name__ == "__main__":
    main()
