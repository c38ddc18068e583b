"""`finetune(config) -> Run`: the training workflow, top to bottom in numbered phases.

    1. settle the config and the run folder (a new run, or the one to resume)
    2. load the base model
    3. prepare the data splits and render them through the chat template
    4. choose the `auto` settings from the data (train/auto.py), make the method's weights trainable,
       checkpoint activations when the memory estimate says so, print the plan (examples, tokens, steps,
       estimated time and memory, the device)
    5. build optimizer, schedule and accelerate; on resume, check and restore the checkpoint
    6. run the loop (validation with sample answers, early stopping, a time budget, checkpoints, progress)
    7. write the deliverable (the best weights) to final/, record the run, print the summary

`plan(config)` runs phases 1-4 alone, in a scratch folder: the plan without a run (the web UI shows
it before starting).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.config import Config, absolute_paths, load_config, load_run_config, to_yaml
from tunesmith.errors import RunError, TrainError, TunesmithError
from tunesmith.io import atomic_dir, atomic_write_text, is_disk_full
from tunesmith.runs import layout, lock
from tunesmith.runs.layout import RunPaths
from tunesmith.runs.store import find_run, register_run
from tunesmith.train import auto, batching, checkpoint, distributed, methods, progress, trackers
from tunesmith.train.loop import Hooks, LoopArgs, LossFn, LoopState, evaluate, time_step, train_loop

RESUME_KEYS = {  # manifest field -> what it means, for the refusal message
    "data_fingerprint": "the training data",
    "chat_template_hash": "the chat template",
    "base_model_sha256": "the base model's weights",
    "method": "the method",
    "method_config": "the method's settings",
}
# The config keys a resume may change, and why that is safe. Every other train.* key, data.max_length
# and model.dtype decide what each step computes: a resume that changes one is refused.
RESUME_MAY_CHANGE = {
    "train.epochs": "lengthens (or shortens) the run; the schedule is laid over the new length from the resumed step",
    "train.max_steps": "as train.epochs",
    "train.early_stopping_patience": "decides only when to stop",
    "train.eval_every": "when validation runs; validating never changes the weights",
    "train.save_every": "when checkpoints are written",
    "train.keep_checkpoints": "how many checkpoints are kept",
    "train.threads": "speed on this machine",
    "train.gradient_checkpointing": "memory against time, for the same losses",
    "train.log_to": "where the metrics are also sent (trackers)",
    "train.sample_answers": "what is generated at a validation; generating never changes the weights",
    "train.sample_max_tokens": "as train.sample_answers",
}


@dataclass
class Run:
    """The outcome of `finetune`: where the run lives and how it went."""

    name: str
    dir: Path
    status: str
    steps: int
    best_step: int | None
    best_val_loss: float | None
    final: Path | None
    stop_reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Session:
    """What the phases hand each other."""

    config: Config  # with every `auto` chosen from phase 4 on
    paths: RunPaths
    accelerator: Any
    manifest: dict[str, Any]
    resume_from: Path | None = None
    lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # holds the run's lock (main process)
    asked: Config | None = None  # the config as given (`auto` kept): what config.yaml says
    first_samples: list[dict] | None = None  # the base model's sample answers, when the time budget timed them


def finetune(config: Config | str | Path | None = None, *, overrides: tuple[str, ...] = (), name: str | None = None,
             resume: str | Path | None = None, on_step: Callable[[LoopState, dict], bool] | None = None,
             show_progress: bool = True, loss_fn: LossFn | None = None) -> Run:
    """Fine-tune `config.model` on `config.data`; returns the Run (its folder holds final/, metrics, checkpoints).

    `loss_fn(model, batch) -> (loss_sum, n_loss_tokens)` is the loop's loss (default: causal_lm_loss,
    logits only where a label is trained; `train.loss.plain_loss` is the full-logits reference).

    `resume` continues a stopped run from its latest checkpoint (config: the run's own, unless given;
    only the keys in RESUME_MAY_CHANGE may differ from the run's). `on_step(state, metrics)` is
    called after every step; returning True stops there (with a checkpoint). The run's lock
    (runs/lock.py) is held from phase 1 until this returns: another process training the same run
    is refused with a RunError.
    """
    started = time.time()
    # 1. settle the config and the run folder, and take the run's lock
    s = _session(config, overrides, name, resume)
    with s.lock:
        return _train(s, started, on_step, show_progress, loss_fn)


def _train(s: _Session, started: float, on_step, show_progress: bool, loss_fn: LossFn | None) -> Run:
    """Phases 2-7 of `finetune`, with the run's lock held."""
    from accelerate.utils import set_seed

    acc = s.accelerator
    out = progress.Printer(enabled=acc.is_main_process and show_progress)
    out.line(f"run {s.paths.name}: {s.paths.dir}")
    set_seed(s.config.train.seed)
    # 2-4. the base model, the data (prepared into the run folder and rendered), the `auto` settings
    # and the method's trainable weights
    ready = _ready(s, out)
    cfg, model, tokenizer, base, splits = ready.config, ready.model, ready.tokenizer, ready.base, ready.splits
    train_set, val_set, dropped, shape, chosen = ready.train_set, ready.val_set, ready.dropped, ready.shape, ready.chosen
    # 4. the plan
    _fill_manifest(s, cfg, base, splits, tokenizer)
    _check_resume(s)
    if cfg.method.preference:  # the reference's log-probabilities, from the model before any step
        loss_fn = _preference(s, model, tokenizer, train_set, val_set, splits, out, loss_fn)
    plan = batching.StepPlan(len(train_set), cfg.train.batch_size, cfg.train.grad_accum, acc.num_processes)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    # 5. optimizer, schedule, accelerate; restore on resume
    collate = _train_collate(tokenizer, cfg, model, acc.device)
    eval_collate = _collate(tokenizer, cfg, model)
    samples = _sampler(s, model, tokenizer, splits.validation, out)
    estimate = progress.estimate(model, train_set, plan, total, cfg, ready.machine)  # before FSDP / ZeRO-3 shard
    # together: FSDP and DeepSpeed wrap the optimizer around the parameters they shard
    adamw = _optimizer(model, cfg)
    distributed.configure(acc, cfg)  # DeepSpeed's batch fields, from the settings `auto` chose
    model, optimizer = acc.prepare(model, adamw)
    if cfg.train.time_budget:  # measured as it trains (DDP and all), before the schedule is laid over the steps
        planned = total
        cfg, chosen, total = _budget(s, shape, chosen, model, acc, train_set, val_set, plan, total, collate,
                                     eval_collate, samples, started, loss_fn)
        estimate = dataclasses.replace(estimate, seconds=estimate.seconds * total / max(planned, 1))
    out.line(progress.plan_line(len(train_set), len(val_set), dropped, plan, total, estimate))
    for line in (auto.plan_line(chosen), (s.manifest.get("budget") or {}).get("line")):
        if line:
            out.line(line)
    scheduler = _schedule(adamw, cfg, total)
    state = _restore(s, model, optimizer, scheduler) if s.resume_from else LoopState()
    _start(s, state)
    # 6. the loop
    args = LoopArgs(total, cfg.train.eval_every, cfg.train.save_every, cfg.train.early_stopping_patience,
                    cfg.train.max_grad_norm, deadline=_deadline(cfg, started, state, s.manifest.get("budget")),
                    validation_seconds=_validation_cost(cfg, s.manifest.get("budget")))
    steps = batching.step_batches(train_set, plan, seed=cfg.train.seed, start_step=state.step,
                                  total_steps=_last_step(total, state), collate=collate, rank=acc.process_index,
                                  group_by_length=_group_by_length(cfg))
    hooks, bar = _hooks(s, model, optimizer, scheduler, val_set, eval_collate, out, on_step, total, state, samples)
    try:
        with trackers.running(acc, s.paths, cfg, s.manifest, state.step, out.line):
            with bar:
                state = train_loop(model, optimizer, scheduler, acc, steps, args, state,
                                   loss_fn=loss_fn, hooks=hooks)
            # 7. the deliverable, the record, the summary
            return _finish(s, model, tokenizer, state, started, out)
    except KeyboardInterrupt:
        _finish_manifest(s, state, "stopped")
        out.line(f"stopped at step {state.step}; `tunesmith train --resume {s.paths.name}` continues from the last checkpoint")
        raise
    except BaseException as e:  # the run says why; a resume clears it
        _finish_manifest(s, state, "failed", error=str(e) if isinstance(e, TunesmithError) else f"{type(e).__name__}: {e}")
        raise


@dataclass
class _Ready:
    """What phases 2-4 hand the rest of a run (or `plan`): the model with its method applied, the rendered data."""

    config: Config  # every `auto` chosen
    model: Any
    tokenizer: Any
    base: dict[str, Any]
    splits: Any
    train_set: list
    val_set: list
    dropped: int
    shape: auto.Shape
    chosen: dict[str, auto.Choice]
    machine: progress.Machine


def _ready(s: _Session, out: progress.Printer) -> _Ready:
    """Phases 2-4 up to the plan: load the base model, prepare and render the data, choose `auto`, apply the method."""
    cfg, acc = s.config, s.accelerator
    model, tokenizer, base = _load_model(cfg, acc)
    if base["fused_kernels"]:
        out.line("fused kernels: Liger RMSNorm, SwiGLU")
    if base["packed_attention"] == "flex":
        out.line("packed attention: flex_attention with block masks, one unpadded row a pass")
    splits, train_set, val_set, dropped = _data(cfg, s, tokenizer)
    shape = auto.Shape.of(train_set, _n_params(model), cfg.method.trains, cfg.train.grad_accum, acc.num_processes,
                       objective=cfg.method.name if cfg.method.preference else "sft")
    cfg, chosen = _choose(s, shape)
    model = methods.apply_method(model, cfg.method)
    # gradient checkpointing's `auto` needs the memory estimate, and that the chosen batch size: choose again
    machine = progress.machine(acc, model)
    shape = dataclasses.replace(shape, memory=_memory(model, train_set, cfg, machine, acc))
    cfg, chosen = _choose(s, shape)
    if cfg.train.gradient_checkpointing:
        methods.checkpoint_activations(model)
    return _Ready(cfg, model, tokenizer, base, splits, train_set, val_set, dropped, shape, chosen, machine)


def plan(config: Config | str | Path | None = None, *, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """What `finetune` would do, without training or making a run: phases 1-4 in a scratch folder.

    Returns the plan line `tunesmith train` prints (examples, tokens, steps, estimated time and
    peak memory), the `auto` choices with their reasons, and the figures behind them. Loads the
    model and renders the data (seconds to minutes); a bad config or data file raises as
    `finetune` would, before anything loads where it can. With train.time_budget the steps are
    planned at the start of the run from a measured step, so `steps` here is what the config
    alone gives.
    """
    import tempfile

    cfg, acc = _settled(config, overrides, None)
    with tempfile.TemporaryDirectory(prefix="tunesmith-plan-") as scratch:
        s = _Session(cfg, RunPaths(Path(scratch) / "plan"), acc, {"name": "plan"}, asked=cfg)
        ready = _ready(s, progress.Printer(enabled=False))
        cfg = ready.config
        steps = batching.StepPlan(len(ready.train_set), cfg.train.batch_size, cfg.train.grad_accum, acc.num_processes)
        total = steps.total_steps(cfg.train.epochs, cfg.train.max_steps)
        est = progress.estimate(ready.model, ready.train_set, steps, total, cfg, ready.machine)
        lines = [progress.plan_line(len(ready.train_set), len(ready.val_set), ready.dropped, steps, total, est),
                 auto.plan_line(ready.chosen)]
        if cfg.train.time_budget:
            lines.append(f"time budget {cfg.train.time_budget}: the steps that fit are planned at the start of the run, "
                         "from a measured step")
    return {"lines": [line for line in lines if line], "steps": total, "seconds": est.seconds,
            "peak_bytes": est.peak_bytes, "train_examples": len(ready.train_set),
            "validation_examples": len(ready.val_set), "tokens_per_epoch": est.tokens_per_epoch,
            "chosen": {key: c.to_dict() for key, c in ready.chosen.items()}}


def _last_step(total: int, state: LoopState) -> int:
    """Where the loop ends: `total`, or where it is for a run that stopped early (resumed only to write final/)."""
    return state.step if state.stop_reason in ("early_stopping", "time_budget") else total


def _group_by_length(cfg: Config) -> bool:
    """Length-grouped steps cut padding; with packing, mixed-length steps fill rows better."""
    return cfg.train.group_by_length if cfg.train.group_by_length is not None else not cfg.train.packing


# ------------------------------------------------------------------ 1. config and run folder


def _session(config, overrides, name, resume) -> _Session:
    resume_run = find_run(resume) if resume else None
    cfg, acc = _settled(config, overrides, resume_run)
    s = _resume_session(cfg, resume_run, acc) if resume_run is not None else _new_session(cfg, name, acc)
    s.asked = cfg
    return s


def _settled(config, overrides, resume_run) -> tuple[Config, Any]:
    """The config (given, read from a file, or the resumed run's own), checked, and the Accelerator for it."""
    if isinstance(config, Config):
        assert not overrides, "pass overrides with a config path"
        cfg = absolute_paths(config)  # its relative paths mean the current folder; the saved copy must say so
    elif config is None and resume_run is not None:
        cfg = load_run_config(resume_run.dir / "config.yaml", overrides)
    else:
        cfg = load_config(config, overrides)
    check_config(cfg)
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    methods.check_method(cfg.method.trains)
    methods.check_fused_kernels(cfg.train.fused_kernels)
    # FSDP / DeepSpeed / N processes as the launch asked, or one line saying why not
    return cfg, distributed.accelerator(cpu=not _cuda(), mixed_precision=_mixed_precision(cfg.train.mixed_precision))


def _new_session(cfg: Config, name: str | None, acc) -> _Session:
    """A new run: its folder made and locked by the main process, its config saved."""
    paths = RunPaths(Path(cfg.output_dir) / _run_name(cfg, name, acc))
    with contextlib.ExitStack() as held:
        if acc.is_main_process:
            try:  # mkdir without exist_ok: of two processes given the same --name, one gets the folder
                paths.dir.mkdir(parents=True)
            except FileExistsError:
                raise RunError(f"run folder {paths.dir} already exists",
                               "pick another --name, or resume it with --resume") from None
            held.enter_context(lock.hold(paths))
            atomic_write_text(paths.config, to_yaml(cfg))
        acc.wait_for_everyone()
        manifest = {"name": paths.name, "status": "running", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return _Session(cfg, paths, acc, manifest, lock=held.pop_all())


def _resume_session(cfg: Config, run, acc) -> _Session:
    """The session of a resumed run, its lock taken first: everything after is read under the lock."""
    paths = RunPaths(run.dir)
    with contextlib.ExitStack() as held:
        if acc.is_main_process:
            held.enter_context(lock.hold(paths))
        run = find_run(run.dir)  # again, under the lock: another process may have just finished it
        check_resumable(run)
        latest = checkpoint.latest(paths.checkpoints)
        if latest is None:
            raise RunError(f"run '{run.name}' has no checkpoint to resume from", "train again (it stopped before its first checkpoint)")
        _check_resume_config(run, cfg)
        return _Session(cfg, paths, acc, dict(run.manifest), resume_from=latest, lock=held.pop_all())


def check_resumable(run) -> None:
    """RunError when `run` is complete: there is nothing to resume (a running one is refused by its lock)."""
    if run.status == "completed":
        raise RunError(f"run '{run.name}' already completed; there is nothing to resume",
                       "start a new run, e.g. with more train.epochs")


def _check_resume_config(run, cfg: Config) -> None:
    """Refuse to resume with a config that changes what each step computes (a key not in RESUME_MAY_CHANGE)."""
    if not run.paths.config.is_file():
        raise RunError(f"run '{run.name}' cannot be resumed: {run.paths.config} is missing", "train again")
    before, now = _step_keys(load_run_config(run.paths.config)), _step_keys(cfg)
    diffs = [f"{key} differs (run has {before[key]!r}, now {now[key]!r})" for key in before if before[key] != now[key]]
    if diffs:
        raise RunError(f"cannot resume run '{run.name}': " + "; ".join(diffs),
                       f"a resumed run trains as it started; only {', '.join(RESUME_MAY_CHANGE)} may change "
                       "on resume: start a new run to change the others")


def _step_keys(cfg: Config) -> dict[str, Any]:
    """The config keys that decide what a training step computes, by dotted name."""
    keys = {f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items() if f"train.{k}" not in RESUME_MAY_CHANGE}
    return keys | {"data.max_length": cfg.data.max_length, "model.dtype": cfg.model.dtype}


def check_config(cfg: Config) -> None:
    """Every value `finetune` refuses before anything loads (ConfigError listing them all); no heavy imports."""
    from tunesmith.errors import ConfigError

    t = cfg.train

    def below(value, least) -> bool:  # `auto` is chosen later, by rules that give valid values
        return value != "auto" and value < least

    problems = [msg for bad, msg in [
        (below(t.batch_size, 1), "train.batch_size must be >= 1"),
        (t.grad_accum < 1, "train.grad_accum must be >= 1"),
        (below(t.eval_every, 1), "train.eval_every must be >= 1"),
        (below(t.save_every, 1), "train.save_every must be >= 1"),
        (t.keep_checkpoints < 1, "train.keep_checkpoints must be >= 1"),
        (t.lr != "auto" and t.lr <= 0, "train.lr must be > 0"),
        (t.max_steps is None and t.epochs != "auto" and t.epochs <= 0, "train.epochs must be > 0 (or set train.max_steps)"),
        (t.max_steps is not None and t.max_steps < 1, "train.max_steps must be >= 1"),
        (not 0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (below(cfg.method.r, 1), "method.r must be >= 1"),
        (below(cfg.method.alpha, 1), "method.alpha must be >= 1"),
        (t.sample_answers < 0, "train.sample_answers must be >= 0"),
        (cfg.method.beta is not None and not cfg.method.beta > 0, "method.beta must be > 0"),
        (cfg.method.sft_weight < 0, "method.sft_weight must be >= 0"),
        *_unused_method_keys(cfg.method),
        (t.sample_max_tokens < 1, "train.sample_max_tokens must be >= 1"),
        (t.time_budget is not None and t.max_steps is not None,
         "train.time_budget and train.max_steps are both set: a budget plans the steps itself; unset one of them"),
        (t.packed_attention == "flex" and not t.packing, "train.packed_attention=flex needs train.packing=true"),
        (t.packed_attention == "flex" and cfg.method.preference,
         f"train.packed_attention=flex is for packed SFT rows; method {cfg.method.name}'s pairs share their prompt "
         "through a dense mask: set train.packed_attention=auto or dense"),
    ] if bad]
    if t.time_budget is not None:
        try:
            auto.parse_duration(t.time_budget)
        except TunesmithError as e:
            problems.append(str(e))
    if not cfg.data.train:
        problems.append("data.train is not set: give the training data file")
    problems += trackers.missing(t.log_to)
    if problems:
        raise ConfigError("; ".join(problems), problems=problems)


def _unused_method_keys(m) -> list[tuple[bool, str]]:
    """Method keys set for a method that does not read them: each one a line, never silently ignored."""
    sft = not m.preference
    return [
        (sft and m.weights != "lora", f"method.weights applies to dpo / simpo; for method.name={m.name} the name says "
                                      "which weights train (lora | full | qlora)"),
        (sft and m.beta is not None, f"method.beta applies to dpo / simpo, not method.name={m.name}"),
        (sft and m.sft_weight != 0, f"method.sft_weight applies to dpo / simpo, not method.name={m.name}"),
        (m.name != "dpo" and m.loss != "sigmoid", f"method.loss applies to dpo, not method.name={m.name}"),
        (m.name != "simpo" and m.gamma != 0.5, f"method.gamma applies to simpo, not method.name={m.name}"),
    ]


def _run_name(cfg: Config, name: str | None, acc) -> str:
    from accelerate.utils import broadcast_object_list

    from tunesmith.models.store import validate_name

    chosen = [validate_name(name, "run") if name else layout.new_run_name(cfg.method.name, Path(cfg.output_dir))]
    if acc.num_processes > 1:  # every process must write into the same folder
        broadcast_object_list(chosen)
    return chosen[0]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mixed_precision(setting: str) -> str:
    """auto = bf16 on a GPU that has it, else full precision (CPU autocast gains little and costs accuracy)."""
    if setting != "auto":
        return setting
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ------------------------------------------------------------------ 2. model


def _load_model(cfg: Config, acc):
    from tunesmith.models.load import load_model, load_tokenizer, local_folder
    from tunesmith.models.store import weights_digest
    from tunesmith.train import packing

    with acc.main_process_first():  # a GGUF model is converted once, by the main process
        folder = local_folder(cfg.model.name, allow_pickle=cfg.model.allow_pickle)
    if cfg.method.trains == "qlora":
        model, tokenizer = methods.load_quantized(folder), load_tokenizer(folder)
    else:
        model, tokenizer = load_model(str(folder), dtype=cfg.model.dtype, allow_pickle=cfg.model.allow_pickle)
    model.config.use_cache = False
    fused = methods.fused_kernels(model, cfg.train.fused_kernels)
    attention = packing.packed_attention(model, cfg.train.packed_attention, acc.device,
                                         packs=cfg.train.packing and not cfg.method.preference)
    packing.attend_with(model, attention)  # before the method: LoRA wraps the model as it will attend
    base = {"base_model": cfg.model.name, "base_model_path": str(folder.resolve()),
            "base_model_sha256": weights_digest(folder), "fused_kernels": "liger" if fused else None,
            "packed_attention": attention if cfg.train.packing else None}
    return model, tokenizer, base


def _n_params(model) -> int:
    """The base model's parameter count (a 4-bit weight counts once, as one parameter)."""
    return sum(p.numel() * (2 if getattr(p, "quant_state", None) is not None else 1) for p in model.parameters())


# ------------------------------------------------------------------ 3. data


def _data(cfg: Config, s: _Session, tokenizer):
    from tunesmith.data.render import render_example

    splits = _splits(cfg, s, tokenizer)
    for part, examples in (("train", splits.train), ("validation", splits.validation)):
        _check_kind(cfg, examples, part)
    train_set, dropped = _render(splits.train, tokenizer, cfg.data.max_length, render_example)
    val_set, _ = _render(splits.validation, tokenizer, cfg.data.max_length, render_example)
    if not train_set:
        raise TrainError(f"no trainable rows in {cfg.data.train}: every example has no tokens to learn from",
                         f"run `tunesmith data check {cfg.data.train}`")
    return splits, train_set, val_set, dropped


def _check_kind(cfg: Config, examples: list[dict], part: str = "train") -> None:
    """Preference pairs go to dpo / simpo, other examples to SFT methods: one line when they do not."""
    from tunesmith.data.formats import is_preference

    pairs = sum(1 for ex in examples if is_preference(ex))
    where = cfg.data.validation if part == "validation" and cfg.data.validation else cfg.data.train
    what = "" if where == cfg.data.validation or part == "train" else f" (its {part} split)"
    if cfg.method.preference and pairs < len(examples):
        raise TrainError(f"method.name={cfg.method.name} trains on preference pairs, but {where}{what} holds "
                         f"{'answers to imitate' if not pairs else f'{len(examples) - pairs} examples that are not pairs'} "
                         "(no chosen / rejected answers)",
                         f"build pairs from it with `tunesmith data pairs {where} --out pairs.jsonl`, "
                         f"or train it with method.name={cfg.method.trains}")
    if not cfg.method.preference and pairs:
        raise TrainError(f"{where}{what} holds preference pairs (chosen / rejected answers), which "
                         f"method.name={cfg.method.name} cannot train on",
                         "set method.name=dpo (or simpo), with method.weights=" + cfg.method.trains)


def _render(examples: list[dict], tokenizer, max_length: int, render_example) -> tuple[list, int]:
    """Rendered examples that have at least one trained token, and how many had none."""
    from tunesmith.data.render import each_example

    rendered = each_example(examples, lambda ex: render_example(ex, tokenizer, max_length=max_length))
    kept = [r for r in rendered if batching.n_loss_tokens(r) > 0]
    return kept, len(examples) - len(kept)


def _splits(cfg: Config, s: _Session, tokenizer):
    """The data splits (prepared on the fly from a raw file) in the run's data/ (a scratch folder when resuming)."""
    from tunesmith.data.prepare import splits_for_training

    if s.resume_from is None:
        with s.accelerator.main_process_first():
            return splits_for_training(cfg.data, s.paths.data, tokenizer, cfg.train.seed)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tunesmith-resume-data-") as scratch:  # compare, never overwrite
        return splits_for_training(cfg.data, Path(scratch), tokenizer, cfg.train.seed)


def _preference(s: _Session, model, tokenizer, train_set, val_set, splits, out, loss_fn):
    """Ready a dpo / simpo run: dropout off, the reference's log-probabilities on every pair (read back
    on resume), the objective in the manifest; returns the loss to train with."""
    from tunesmith.train import preference

    cfg, acc = s.config, s.accelerator
    obj = preference.Objective.of(cfg.method)
    preference.disable_dropout(model)  # the policy must score as the reference does at step 0
    s.manifest["objective"] = dataclasses.asdict(obj)
    what = {"dpo": f"dpo ({obj.loss} loss), beta {obj.beta:g}", "simpo": f"simpo, beta {obj.beta:g}, gamma {obj.gamma:g}"}
    line = what[obj.name] + (f", sft_weight {obj.sft_weight:g}" if obj.sft_weight else "")
    if obj.needs_reference:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        start = time.perf_counter()

        def compute(pairs):
            return preference.reference_logps(model, pairs, acc, pad_id=pad, batch_size=cfg.train.batch_size,
                                              pack=2 * cfg.data.max_length if cfg.train.packing else None)

        if s.resume_from is None:
            preference.check_starts_as_base(model)

        def broadcast(flag: bool) -> bool:
            from accelerate.utils import broadcast_object_list

            return broadcast_object_list([flag])[0] if acc.num_processes > 1 else flag

        if s.resume_from is None:
            out.line(f"reference: scoring {len(train_set) + len(val_set)} pairs with the model as it starts ...")
        fresh = preference.attach_reference(s.paths.dir, {"train": train_set, "validation": val_set}, compute,
                                            splits.card.get("fingerprint"), is_main=acc.is_main_process,
                                            broadcast=broadcast)
        n = len(train_set) + len(val_set)
        line += (f"; reference: the base's log-probabilities of {n} pairs, computed once "
                 f"({time.perf_counter() - start:.1f} s; no reference model in memory)" if fresh
                 else f"; reference: the log-probabilities of {n} pairs read back from {preference.REFERENCE_FILE}")
    else:
        line += "; reference-free"
    out.line(line)
    return loss_fn or preference.make_loss(obj)


# ------------------------------------------------------------------ 4. auto settings and the time budget


def _choose(s: _Session, shape: auto.Shape) -> tuple[Config, dict[str, auto.Choice]]:
    """The config as given with every `auto` chosen (a resumed run takes back what it chose), recorded in
    the manifest."""
    previous = s.manifest.get("resolved") if s.resume_from is not None else None
    cfg, chosen = auto.choose(s.asked, shape, previous=previous)
    s.config = cfg
    s.manifest["resolved"] = {key: c.to_dict() for key, c in chosen.items()}
    return cfg, chosen


def _memory(model, train_set, cfg: Config, machine: progress.Machine, acc) -> auto.Memory:
    """The estimated peak without and with gradient checkpointing, and the free memory; every process
    takes the main process's figures, so all decide alike (free memory differs from device to device)."""
    peaks = [progress.peak_bytes(model, train_set, cfg.train.batch_size, cfg, machine, checkpointing=on).total
             for on in (False, True)]
    memory = auto.Memory(*peaks, machine.free_bytes)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        memory = broadcast_object_list([memory])[0]
    return memory


def _sampler(s: _Session, model, tokenizer, validation: list[dict], out) -> Callable | None:
    """`sample(model) -> [{"prompt", "answer", "expected"}]`: the first train.sample_answers validation
    prompts answered greedily through the one engine, or None when off (or under FSDP / DeepSpeed,
    where a forward needs every process)."""
    from accelerate.utils import DistributedType

    from tunesmith.evaluate.strategies import to_case
    from tunesmith.models.engine import answer

    n, acc = s.config.train.sample_answers, s.accelerator
    cases = [c for c in map(to_case, validation) if c is not None][:n]
    if not cases:
        return None
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        out.line("sample answers: off under FSDP / DeepSpeed (a sharded model generates only with every process)")
        return None
    max_tokens = s.config.train.sample_max_tokens

    def sample(wrapped) -> list[dict]:
        rows = []
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(wrapped)
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                answers = answer(unwrapped, tokenizer, [c.prompt for c in cases], max_new_tokens=max_tokens,
                                 batch_size=len(cases))
            finally:
                unwrapped.train(was_training)
            rows = [{"prompt": c.query, "answer": a.text, "expected": c.reference} for c, a in zip(cases, answers)]
        acc.wait_for_everyone()
        return rows

    return sample


def _budget(s: _Session, shape, chosen, model, acc, train_set, val_set, plan, total: int, collate, eval_collate,
            samples, started: float, loss_fn) -> tuple[Config, dict, int]:
    """Plan the steps that fit in train.time_budget from a measured step (and validation); returns the
    config with the cadence chosen for that length, the choices, and the step count."""
    budget = auto.parse_duration(s.config.train.time_budget)
    previous = (s.manifest.get("budget") or {}) if s.resume_from is not None else {}
    if previous:  # a resume trains to the count its run planned (the schedule was laid over it)
        cfg, chosen = auto.choose(s.asked, shape, total_steps=previous["steps"], previous=s.manifest.get("resolved"))
        s.config = cfg
        return cfg, chosen, previous["steps"]
    first = next(iter(batching.step_batches(train_set, plan, seed=s.config.train.seed, start_step=0, total_steps=1,
                                            collate=collate, rank=acc.process_index,
                                            group_by_length=_group_by_length(s.config))))
    step_seconds = time_step(model, acc, first, loss_fn)
    eval_seconds = _validation_seconds(s, model, acc, val_set, eval_collate, samples)
    spent = time.time() - started
    if acc.num_processes > 1:  # every process plans (and refuses) alike: the main process's measurements
        from accelerate.utils import broadcast_object_list

        step_seconds, eval_seconds, spent = broadcast_object_list([step_seconds, eval_seconds, spent])
    reserve = 0.02 * budget + 5  # writing final/ and the summary
    if step_seconds + eval_seconds + reserve > budget - spent:
        raise TrainError(f"train.time_budget {s.config.train.time_budget} is shorter than one training step here "
                         f"(measured {step_seconds:.1f} s a step, {eval_seconds:.1f} s a validation, {reserve:.0f} s "
                         f"to write the deliverable; {spent:.0f} s already spent loading)",
                         "give a longer budget, or lower train.batch_size / data.max_length")
    cfg, steps = s.config, total
    most = auto.budget_validations(budget, spent, eval_seconds)
    for _ in range(3):  # the cadence depends on the length, the length on the cadence's cost
        steps = auto.budget_steps(budget, spent, step_seconds, eval_seconds, cfg.train.eval_every, total, reserve)
        cfg, chosen = auto.choose(s.asked, shape, total_steps=steps, max_validations=most)
    s.config = cfg
    s.manifest["resolved"] = {key: c.to_dict() for key, c in chosen.items()}
    epochs = steps / max(plan.steps_per_epoch, 1)
    seen = (f"{100 * epochs:.0f}% of the training examples seen once" if epochs < 1
            else f"{epochs:.2f} passes over the training examples")
    line = (f"time budget {progress._duration(budget)}: {steps} of {total} planned steps fit ({seen}; measured "
            f"{step_seconds:.2f} s a step, {eval_seconds:.1f} s a validation)")
    if steps == total:
        line = (f"time budget {progress._duration(budget)}: all {total} steps fit (measured {step_seconds:.2f} s a step, "
                f"{eval_seconds:.1f} s a validation)")
    s.manifest["budget"] = {"seconds": budget, "steps": steps, "planned_steps": total, "step_seconds": step_seconds,
                            "validation_seconds": eval_seconds, "reserve_seconds": reserve, "line": line}
    return cfg, chosen, steps


def _validation_seconds(s: _Session, model, acc, val_set, collate, samples) -> float:
    """One validation's time: the first batch's forward times the batches, plus one round of sample
    answers (kept as step 0's: the model has not changed yet)."""
    if not val_set:
        return 0.0
    batches = list(batching.eval_batches(val_set, s.config.train.batch_size, collate, rank=acc.process_index,
                                         world_size=acc.num_processes))
    start = time.perf_counter()
    evaluate(model, iter(batches[:1]), acc, _eval_fn(s.config))
    seconds = (time.perf_counter() - start) * len(batches)
    if samples is not None:
        start = time.perf_counter()
        s.first_samples = samples(model)
        seconds += time.perf_counter() - start
    return seconds


def _deadline(cfg: Config, started: float, state: LoopState, budget: dict | None) -> float | None:
    """When the last step must have ended for train.time_budget (time.time()): what is left after
    it holds the last validation and writing the deliverable. A resume has what its run left."""
    if not cfg.train.time_budget:
        return None
    margin = (budget or {}).get("validation_seconds", 0.0) + (budget or {}).get("reserve_seconds", 5.0)
    return started + auto.parse_duration(cfg.train.time_budget) - state.elapsed - margin


def _validation_cost(cfg: Config, budget: dict | None) -> float:
    return (budget or {}).get("validation_seconds", 0.0) if cfg.train.time_budget else 0.0


# ------------------------------------------------------------------ manifest and resume checks


def _fill_manifest(s: _Session, cfg: Config, base: dict, splits, tokenizer) -> None:
    from tunesmith.data.render import template_hash

    fresh = {
        **base,
        "method": cfg.method.name,
        "method_config": dataclasses.asdict(cfg.method),
        "data_fingerprint": splits.card.get("fingerprint"),
        "chat_template_hash": template_hash(tokenizer),
        "seed": cfg.train.seed,
        "library_versions": _versions(),
        "world_size": s.accelerator.num_processes,
        "distributed": distributed.describe(s.accelerator),
    }
    if s.resume_from is None:
        s.manifest.update(fresh)
    else:
        s.manifest["_fresh"] = fresh


def _check_resume(s: _Session) -> None:
    """Refuse to resume when what the run trained on differs from what the config gives now."""
    if s.resume_from is None:
        return
    fresh = s.manifest.pop("_fresh")
    distributed.check_resume(s.accelerator, s.manifest.get("distributed"),
                             (s.resume_from / checkpoint.SHARDED).is_dir(), s.paths.name)
    diffs = [f"{what} differs ({key}: run has {s.manifest.get(key)!r}, now {fresh[key]!r})"
             for key, what in RESUME_KEYS.items() if s.manifest.get(key) != fresh[key]]
    if diffs:
        raise RunError(f"cannot resume run '{s.paths.name}': " + "; ".join(diffs),
                       "resuming needs the same data, chat template, base model and method; start a new run instead")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("tunesmith", "torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


# ------------------------------------------------------------------ 5. optimizer and restore


def _optimizer(model, cfg: Config):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def _schedule(optimizer, cfg: Config, total_steps: int):
    """The learning-rate schedule over the run's steps (known once a time budget has planned them)."""
    from transformers import get_scheduler

    warmup = math.ceil(cfg.train.warmup_ratio * total_steps)
    kind = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.train.schedule]
    # Not passed through accelerate.prepare: its scheduler wrapper steps once per process. Laid over
    # the AdamW itself, whose param groups FSDP's and ZeRO's wrappers step.
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _restore(s: _Session, model, optimizer, scheduler) -> LoopState:
    """Load the latest checkpoint (verified) into model, optimizer, schedule and RNG; its loop state."""
    saved = checkpoint.load(s.resume_from)
    if saved["sharded"] is not None:  # FSDP / DeepSpeed: every process reads its shard of weights and optimizer
        distributed.load_state(s.accelerator, saved["sharded"])
    else:
        checkpoint.load_weights(s.accelerator.unwrap_model(model), saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = saved["rng"]
    checkpoint.set_rng_state(rng[min(s.accelerator.process_index, len(rng) - 1)])
    checkpoint.set_python_rng(saved["state"])
    loop = saved["state"]["loop"]
    # A run that stopped early is over: resumed, it only writes final/ (a kill or full disk stopped that).
    over = loop["stop_reason"] if loop["stop_reason"] in ("early_stopping", "time_budget") else None
    state = LoopState(**{**loop, "stop_reason": over})
    state.train_losses = [tuple(x) for x in state.train_losses]
    return state


def _start(s: _Session, state: LoopState) -> None:
    if not s.accelerator.is_main_process:
        return
    if s.resume_from is not None:
        layout.truncate_metrics(s.paths, state.step)
        checkpoint.sweep(s.paths.checkpoints)  # half-written checkpoints of the killed process
        checkpoint.sweep(s.paths.dir, prefix=f".{s.paths.final.name}.")  # ...and a half-written final/
        atomic_write_text(s.paths.config, to_yaml(s.asked or s.config))  # what may change on resume did
        s.manifest.pop("error", None)
    s.manifest.update(status="running", steps=state.step)
    layout.write_manifest(s.paths, s.manifest)
    register_run(s.paths.dir, s.manifest)


# ------------------------------------------------------------------ 6. hooks


def _collate(tokenizer, cfg: Config | None = None, model=None):
    """Validation batches: padded examples, or preference pairs one to a row."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cfg is not None and cfg.method.preference:
        return _pair_collate(pad, model, packed=False)
    return lambda examples: batching.collate_padded(examples, pad)


def _train_collate(tokenizer, cfg: Config, model, device):
    """Packed rows (attention kept inside each example) when train.packing, else padded micro-batches."""
    from tunesmith.train import packing

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cfg.method.preference:
        return _pair_collate(pad, model, packed=cfg.train.packing, max_length=cfg.data.max_length, device=device)
    if not cfg.train.packing:
        return _collate(tokenizer)
    dtype = packing.mask_dtype(model)
    costs = packing.device_costs(device)
    layout = packing.attention_layout(model)  # refuses architectures a block mask cannot keep apart
    attention = packing.attention_of(model)  # the masks the model takes: dense 4D, or flex BlockMasks
    return lambda examples: packing.packed_micro_batches(examples, max_length=cfg.data.max_length, pad_id=pad,
                                                          dtype=dtype, layout=layout, attention=attention,
                                                          device=device, **costs)


def _pair_collate(pad: int, model, *, packed: bool, max_length: int = 0, device=None):
    """Pairs sharing their prompt in a block mask (several to a row when packed), or, for models a block
    mask cannot describe, two plain rows a pair."""
    from tunesmith.train import packing, preference

    layout = preference.shared_layout(model)
    dtype = packing.mask_dtype(model)
    if not packed or layout is None:
        return lambda pairs: preference.collate_pairs([[p] for p in pairs], pad_id=pad, dtype=dtype, layout=layout,
                                                      shared=layout is not None)
    costs = packing.device_costs(device)

    def collate(pairs):  # a pair's row holds its prompt once and both answers: up to 2 x max_length
        lengths = [len(p.input_ids) for p in pairs]
        plan = packing.plan_rows(lengths, 2 * max_length, **costs)
        return [preference.collate_pairs([[pairs[i] for i in row] for row in p.rows], pad_id=pad, dtype=dtype,
                                         layout=layout) for p in plan.passes]

    return collate


def _eval_fn(cfg: Config | None = None):
    if cfg is not None and cfg.method.preference:
        from tunesmith.train import preference

        return preference.make_eval(preference.Objective.of(cfg.method))
    from tunesmith.train.loss import causal_lm_eval  # logits only where a label is trained, in chunks

    return causal_lm_eval


def _hooks(s: _Session, model, optimizer, scheduler, val_set, collate, out, on_step, total, state,
           samples) -> tuple[Hooks, Any]:
    acc, cfg = s.accelerator, s.config
    sink = progress.MetricsSink(s.paths, enabled=acc.is_main_process, accelerator=acc)
    bar = out.bar(total, state.step)

    def save(st: LoopState) -> None:
        _save_checkpoint(s, model, optimizer, scheduler, st)

    def evaluate_now() -> dict:
        batches = batching.eval_batches(val_set, cfg.train.batch_size, collate, rank=acc.process_index,
                                        world_size=acc.num_processes)
        return evaluate(model, batches, acc, _eval_fn(cfg))

    def step(st: LoopState, metrics: dict) -> bool:
        bar.update(st.step, metrics)
        return bool(on_step and on_step(st, metrics))

    def validated(st: LoopState, result: dict) -> list[dict] | None:
        """After each validation: its line, and the sample answers (logged by the loop)."""
        best = " (best)" if st.best_step == st.step else ""
        answers = samples(model) if samples is not None else None
        bar.note(progress.validation_line(st.step, result, best, answers))
        return answers

    def start(st: LoopState) -> None:
        if samples is not None and st.step == 0:
            # step 0: the base model's answers, before any training (already generated when a budget timed them)
            rows = s.first_samples if s.first_samples is not None else samples(model)
            sink.write([{"step": 0, "split": "samples", "samples": rows}])
            bar.note(progress.validation_line(0, None, "", rows))

    hooks = Hooks(evaluate=evaluate_now if val_set else None, on_improved=save, save=save, log=sink.write, on_step=step,
                  validated=validated, start=start)
    return hooks, bar


def _save_checkpoint(s: _Session, model, optimizer, scheduler, state: LoopState) -> None:
    """Every process hands in its RNG (and under FSDP / DeepSpeed writes its shard of the model and
    optimizer); the main process writes the rest of the checkpoint and rotates old ones."""
    from accelerate.utils import gather_object

    acc = s.accelerator
    rngs = [checkpoint.rng_state()]
    if acc.num_processes > 1:
        rngs = gather_object(rngs)
    folder = s.paths.checkpoint(state.step)
    already = state.last_good_step == state.step  # saved at this step already (the best, just now)
    if already:
        acc.wait_for_everyone()
        return
    state.last_good_step = state.step
    weights = _trainable_weights(acc, model)
    shards = _save_shards(acc, s.paths.checkpoints, state.step) if distributed.sharded(acc) else None
    if acc.is_main_process:
        checkpoint.save(folder, weights=weights,
                        optimizer_state=None if shards else optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                        rng_states=rngs, loop_state=state.to_dict(), shards=shards)
        protect = {state.best_step} if state.best_step is not None else set()
        checkpoint.rotate(s.paths.checkpoints, s.config.train.keep_checkpoints, protect)
        s.manifest.update(steps=state.step, best_step=state.best_step, best_val_loss=state.best_val_loss)
        layout.write_manifest(s.paths, s.manifest)
    acc.wait_for_everyone()


def _trainable_weights(acc, model) -> dict:
    """Trainable weights by name, whole; under FSDP / DeepSpeed gathered from the shards (every process must call)."""
    unwrapped = acc.unwrap_model(model)
    if distributed.sharded(acc):
        names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
        return {k: v for k, v in distributed.full_state(acc, model).items() if k in names}
    return checkpoint.trainable_state(unwrapped) if acc.is_main_process else {}


def _save_shards(acc, root: Path, step: int) -> Path:
    """Every process writes its shard into the step's staging folder (made empty by the main process first)."""
    staging = checkpoint.staging(root, step)
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    acc.wait_for_everyone()
    return distributed.save_state(acc, staging)


# ------------------------------------------------------------------ 7. finish


def _finish(s: _Session, model, tokenizer, state: LoopState, started: float, out) -> Run:
    acc = s.accelerator
    if state.stop_reason == "non_finite":
        _finish_manifest(s, state, "failed")
        raise TrainError(
            f"the training loss became NaN or infinite at step {state.step + 1}; training stopped "
            f"(last good checkpoint: step {state.last_good_step}, in {s.paths.checkpoints})",
            f"lower train.lr (now {s.config.train.lr}) or check the data with `tunesmith data check`")
    status = "stopped" if state.stop_reason == "stopped" else "completed"  # a time budget completes the run
    final = _write_final(s, model, tokenizer, state) if status == "completed" else None
    summary = progress.summary(state, time.time() - started, "pairs" if s.config.method.preference else "tokens")
    _finish_manifest(s, state, status, final=final, summary=summary)
    if acc.is_main_process:
        line = progress.stop_line(state, s.manifest.get("budget", {}).get("steps"))
        if line:
            out.line(line)
        out.line(progress.summary_line(state, summary, final, s.paths))
    acc.wait_for_everyone()
    return Run(s.paths.name, s.paths.dir.resolve(), status, state.step, state.best_step, state.best_val_loss,
               final, state.stop_reason, summary)


def _write_final(s: _Session, model, tokenizer, state: LoopState) -> Path:
    """final/ = the best validation step's weights (or the last step's when there was no validation).

    Under FSDP / DeepSpeed the weights are gathered from every process's shards first and the best
    step's trainable weights laid over them: the deliverable is whole, as on one process.
    """
    acc = s.accelerator
    unwrapped = acc.unwrap_model(model)
    best = s.paths.checkpoint(state.best_step) if state.best_step not in (None, state.step) else None
    whole = None
    if distributed.sharded(acc):
        whole = distributed.full_state(acc, model)
        if best is not None and acc.is_main_process:
            whole.update(checkpoint.load(best)["weights"])
    elif best is not None:
        checkpoint.load_weights(unwrapped, checkpoint.load(best)["weights"])
    if acc.is_main_process:
        try:
            with atomic_dir(s.paths.final, overwrite=True) as tmp:
                methods.save_deliverable(unwrapped, tokenizer, tmp, s.config.method.trains, state_dict=whole)
        except OSError as e:
            if not is_disk_full(e):
                raise
            need, free = _deliverable_bytes(unwrapped, s.config.method.trains), shutil.disk_usage(s.paths.dir).free
            raise TrainError(f"disk full while writing {s.paths.final}: it needs about {need / 1e6:,.1f} MB, "
                             f"{free / 1e6:,.1f} MB are free; the checkpoints are intact",
                             f"free some space, then `tunesmith train --resume {s.paths.name}` writes final/ "
                             "from the last checkpoint") from None
    acc.wait_for_everyone()
    return s.paths.final.resolve()


def _deliverable_bytes(model, method: str) -> int:
    """The weights final/ holds: the adapter (lora, qlora) or every weight (full); the tokenizer adds a few MB."""
    params = [p for p in model.parameters() if p.requires_grad] if method in ("lora", "qlora") else model.parameters()
    return sum(p.numel() * p.element_size() for p in params)


def _finish_manifest(s: _Session, state: LoopState, status: str, **extra: Any) -> None:
    if not s.accelerator.is_main_process or not s.paths.dir.exists():
        return
    s.manifest.pop("_fresh", None)
    s.manifest.update(status=status, steps=state.step, best_step=state.best_step, best_val_loss=state.best_val_loss,
                      stop_reason=state.stop_reason, **{k: (str(v) if isinstance(v, Path) else v) for k, v in extra.items()})
    layout.write_manifest(s.paths, s.manifest)
    register_run(s.paths.dir, s.manifest)


def score(model, tokenizer, examples: list[dict], *, batch_size: int = 8, max_length: int | None = 1024) -> dict:
    """Mean loss and next-token accuracy of `model` on canonical examples (outside a training run)."""
    from accelerate import Accelerator

    from tunesmith.data.render import render_example

    rendered, _ = _render(examples, tokenizer, max_length, render_example)
    batches = batching.eval_batches(rendered, batch_size, _collate(tokenizer))
    return evaluate(model, batches, Accelerator(cpu=not _cuda()), _eval_fn())
