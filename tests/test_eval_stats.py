"""Paired bootstrap intervals on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.evaluate.metrics import aggregate
from tunesmith.evaluate.stats import paired_bootstrap


def mean(v):
    return float(np.mean(v))


def test_a_constant_shift_has_a_zero_width_interval():
    base = list(np.random.default_rng(0).random(50))
    ci = paired_bootstrap(base, [b + 0.25 for b in base], mean, seed=1)
    assert ci.diff == pytest.approx(0.25) and ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)
    assert ci.significant and ci.n == 50


def test_identical_strategies_are_not_significant():
    base = [1.0, 0.0] * 20
    ci = paired_bootstrap(base, list(base), mean)
    assert (ci.diff, ci.low, ci.high, ci.significant) == (0.0, 0.0, 0.0, False)


def test_interval_width_matches_the_normal_approximation():
    # other beats base on half the examples by 1, ties on the rest: diff = 0.5,
    # standard error sqrt(0.25 / 400) = 0.025, so the 95% interval is about 0.5 +- 0.049
    base = [0.0] * 400
    other = [1.0, 0.0] * 200
    ci = paired_bootstrap(base, other, mean, resamples=2000, seed=3)
    assert ci.diff == 0.5
    assert ci.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert ci.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)


def test_seeded_and_pairs_with_errors_left_out():
    base = [0.1, 0.5, 0.9, 0.3, None]
    other = [0.2, 0.4, 1.0, 0.6, 1.0]
    a = paired_bootstrap(base, other, mean, seed=7)
    b = paired_bootstrap(base, other, mean, seed=7)
    assert a == b and a.n == 4
    assert a.diff == pytest.approx(0.1)
    assert paired_bootstrap([None], [1.0], mean) is None


def test_vector_values_for_pooled_loss():
    base = [(2.0, 1), (6.0, 3)]  # 2.0 nats per token
    other = [(1.0, 1), (3.0, 3)]  # 1.0
    ci = paired_bootstrap(base, other, lambda v: aggregate("loss", v))
    assert ci.diff == pytest.approx(-1.0) and ci.high == pytest.approx(-1.0) and ci.significant
