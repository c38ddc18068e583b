"""The step plan: which examples each optimizer step takes, on which process, in a reproducible order."""

from __future__ import annotations

from tunesmith.data.render import Rendered
from tunesmith.train.batching import StepPlan, collate_padded, epoch_order, n_loss_tokens, split_step, step_batches


def _examples(lengths):
    return [Rendered(list(range(1, n + 1)), [0] * (n // 2) + [1] * (n - n // 2)) for n in lengths]


def test_steps_per_epoch_and_total():
    assert StepPlan(29, 4).steps_per_epoch == 8  # 7 full steps + a last one of 1 example
    assert StepPlan(29, 2, grad_accum=1, world_size=2).steps_per_epoch == 7  # rest 1 < 2 micro-batches: dropped
    assert StepPlan(30, 2, grad_accum=1, world_size=2).steps_per_epoch == 8  # rest 2: kept
    assert StepPlan(29, 4).total_steps(epochs=2.5, max_steps=None) == 20
    assert StepPlan(29, 4).total_steps(epochs=2, max_steps=7) == 7


def test_order_is_a_pure_function_of_seed_and_epoch():
    lengths = [5 + (i * 7) % 23 for i in range(50)]
    plan = StepPlan(50, 4)
    a, b = epoch_order(lengths, plan, 42, 0), epoch_order(lengths, plan, 42, 0)
    assert a == b and a != epoch_order(lengths, plan, 42, 1) and a != epoch_order(lengths, plan, 43, 0)
    assert sorted(i for step in a for i in step) == list(range(50))  # every example once per epoch
    # Length-grouped: each step's lengths span much less than the data's range.
    spread = max(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in a)
    assert spread <= 3 < max(lengths) - min(lengths)


def test_micro_batches_are_dealt_to_processes_longest_first():
    lengths = [10, 3, 7, 8, 2, 9]
    groups = split_step(range(6), lengths, StepPlan(6, 1, grad_accum=3, world_size=2))
    assert groups == [[0], [5], [3], [2], [1], [4]]  # j -> process j % 2, accumulation step j // 2


def test_step_batches_resume_mid_run_and_count_global_loss_tokens():
    examples = _examples([4, 6, 5, 7, 3, 8, 6, 4, 5, 9])
    plan = StepPlan(10, 2, grad_accum=1, world_size=2)
    full = [(b.step, [m["input_ids"].tolist() for m in b.micro], b.n_loss_tokens)
            for b in step_batches(examples, plan, seed=1, start_step=0, total_steps=5, collate=lambda e: collate_padded(e, 0))]
    later = [(b.step, [m["input_ids"].tolist() for m in b.micro], b.n_loss_tokens)
             for b in step_batches(examples, plan, seed=1, start_step=3, total_steps=5, collate=lambda e: collate_padded(e, 0))]
    assert later == full[3:]  # resuming at step 3 sees exactly the batches of a straight run
    assert [step for step, _, _ in full] == [0, 1, 2, 3, 4]  # epoch 0 has 2 steps; 1 and 2 follow
    rank1 = list(step_batches(examples, plan, seed=1, start_step=0, total_steps=1, rank=1,
                              collate=lambda e: collate_padded(e, 0)))[0]
    assert rank1.n_loss_tokens == full[0][2]  # both processes normalise by the whole step's tokens


def test_collate_pads_right_and_masks_labels():
    ex = _examples([3, 5])
    batch = collate_padded(ex, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, -100, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == batch["token_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert [n_loss_tokens(e) for e in ex] == [2, 3]
