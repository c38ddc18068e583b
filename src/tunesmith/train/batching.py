"""Which examples make up each optimizer step, and on which process and micro-batch each one runs.

The order is a pure function of (seed, epoch, data), so a resumed run finds the same batches
from the step number alone and every process of a multi-process run computes the same plan
without talking to the others. Within a step, examples are sorted by length before they are cut
into micro-batches, so a padded micro-batch wastes little; the steps themselves come from a
seeded shuffle. How a micro-batch becomes tensors (padded here, packed in packing.py) is the
`collate` function passed in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from tunesmith.data.render import Rendered, pad_batch

if TYPE_CHECKING:
    import torch

IGNORE = -100
GROUP_WINDOW = 64  # steps whose examples are sorted by length together
Collate = Callable[[Sequence[Rendered]], "dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class StepPlan:
    """The shape of training: how many examples one optimizer step takes, split how."""

    n_examples: int
    batch_size: int  # examples per micro-batch, per process
    grad_accum: int = 1
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def micro_batches(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Full steps, plus a last smaller one when it still gives every micro-batch an example."""
        full, rest = divmod(self.n_examples, self.global_batch)
        return full + (1 if rest >= self.micro_batches else 0)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, math.ceil(epochs * self.steps_per_epoch))


@dataclass
class StepBatch:
    """One optimizer step for this process: its micro-batches, and the loss-bearing tokens of the
    whole step over all processes (the loss is normalised by that, so accumulation and DDP give the
    same gradient as one big batch)."""

    step: int  # 0-based index of the optimizer step
    micro: list[dict]
    n_loss_tokens: int
    n_examples: int


def epoch_order(lengths: Sequence[int], plan: StepPlan, seed: int, epoch: int,
                group_by_length: bool = True) -> list[list[int]]:
    """Example indices per step for one epoch, length-grouped unless `group_by_length` is False.

    A shuffle seeded by (seed, epoch); each window of GROUP_WINDOW steps' examples is sorted by
    length and cut into steps, and the steps are shuffled again, so a step holds examples of
    similar length (little padding) while the order over the epoch stays random. Packing wants
    the opposite: a step of mixed lengths lets long and short examples share a row, while a step
    of only long ones leaves each in a row of its own.
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    usable = order[: min(len(order), plan.steps_per_epoch * plan.global_batch)]
    if not group_by_length:
        return [usable[i : i + plan.global_batch] for i in range(0, len(usable), plan.global_batch)]
    window = plan.global_batch * GROUP_WINDOW
    steps: list[list[int]] = []
    for start in range(0, len(usable), window):
        chunk = sorted(usable[start : start + window], key=lambda i: (-lengths[i], i))
        steps.extend(chunk[i : i + plan.global_batch] for i in range(0, len(chunk), plan.global_batch))
    rng.shuffle(steps)
    return steps


def split_step(indices: Sequence[int], lengths: Sequence[int], plan: StepPlan) -> list[list[int]]:
    """A step's examples, longest first, dealt into `micro_batches` groups of similar length.

    Micro-batch j runs on process j % world_size as its (j // world_size)-th accumulation step.
    """
    ranked = sorted(indices, key=lambda i: (-lengths[i], i))
    n = plan.micro_batches
    size, extra = divmod(len(ranked), n)
    groups, start = [], 0
    for j in range(n):
        end = start + size + (1 if j < extra else 0)
        groups.append(ranked[start:end])
        start = end
    return groups


def step_batches(
    examples: Sequence[Rendered], plan: StepPlan, *, seed: int, start_step: int, total_steps: int,
    collate: Collate, rank: int = 0, group_by_length: bool = True,
) -> Iterator[StepBatch]:
    """This process's micro-batches for steps start_step..total_steps-1, epochs cycling as needed."""
    lengths = [len(e.input_ids) for e in examples]
    per_epoch = plan.steps_per_epoch
    cached_epoch, steps = -1, []
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, per_epoch)
        if epoch != cached_epoch:
            cached_epoch, steps = epoch, epoch_order(lengths, plan, seed, epoch, group_by_length)
        groups = split_step(steps[index], lengths, plan)
        mine = groups[rank :: plan.world_size]
        n_loss = sum(n_loss_tokens(examples[i]) for i in steps[index])
        micro = [b for g in mine for b in _collated(collate, [examples[i] for i in g])]
        yield StepBatch(step, micro, n_loss, len(steps[index]))


def n_loss_tokens(example: Rendered) -> int:
    """What an example adds to its step's loss denominator: trained positions (SFT), or 1 (a preference pair)."""
    return example.loss_units


def collate_padded(examples: Sequence[Rendered], pad_id: int) -> "dict[str, torch.Tensor]":
    """Right-padded to the longest: input_ids, labels (-100 on padding), attention_mask, token_mask (B, T)."""
    batch = pad_batch(examples, pad_id)
    return {**batch, "token_mask": batch["attention_mask"].clone()}


def eval_batches(examples: Sequence[Rendered], batch_size: int, collate: Collate, *, rank: int = 0,
                 world_size: int = 1) -> Iterator[dict]:
    """Validation batches for this process: every world_size-th example, sorted by length (no shuffle)."""
    mine = sorted(range(rank, len(examples), world_size), key=lambda i: -len(examples[i].input_ids))
    for start in range(0, len(mine), batch_size):
        yield from _collated(collate, [examples[i] for i in mine[start : start + batch_size]])


def _collated(collate: Collate, examples: Sequence[Rendered]) -> list[dict]:
    """`collate` gives one batch, or a list of them (packing runs a micro-batch's rows a few at a time)."""
    out = collate(examples)
    return out if isinstance(out, list) else [out]
