"""agent/control/baseline.py: the learned normal per (group, class)."""

from __future__ import annotations

import math

import numpy as np

from agent.control.baseline import FULL_FRAME_BITS, MIN_DEV_RATIO, WARMUP_DEV_RATIO, Baseline


def grid(value: float) -> np.ndarray:
    return np.full((1, 1), float(value))


ALL = np.ones((1, 1), dtype=bool)
NONE = np.zeros((1, 1), dtype=bool)


def thresholds(b: Baseline, k: float = 4.0, min_pps: float = 0.0, floor: float = 0.0) -> tuple[float, float]:
    t_pps, t_bps = b.thresholds(k, min_pps, grid(floor), grid(0))
    return float(t_pps[0, 0]), float(t_bps[0, 0])


def test_an_unseen_series_cannot_start_an_attack() -> None:
    b = Baseline((1, 1), half_life_s=60, warmup_s=0)
    assert thresholds(b, min_pps=100) == (math.inf, math.inf)


def test_the_first_value_is_the_mean_and_the_mean_follows_with_the_half_life() -> None:
    b = Baseline((1, 1), half_life_s=60, warmup_s=0)
    b.learn(grid(1000), grid(8e6), 1.0, ALL)
    assert b.mean_pps[0, 0] == 1000 and b.var_pps[0, 0] == 0
    b.learn(grid(2000), grid(8e6), 60.0, ALL)  # one half-life in one step: half way
    assert b.mean_pps[0, 0] == 1500


def test_weights_follow_time_not_ticks() -> None:
    fast, slow = Baseline((1, 1), 60, 0), Baseline((1, 1), 60, 0)
    for b in (fast, slow):
        b.learn(grid(1000), grid(0), 1.0, ALL)
    for _ in range(100):
        fast.learn(grid(3000), grid(0), 0.1, ALL)
    slow.learn(grid(3000), grid(0), 10.0, ALL)
    assert math.isclose(fast.mean_pps[0, 0], slow.mean_pps[0, 0], rel_tol=1e-9)


def test_masked_series_learn_nothing() -> None:
    b = Baseline((1, 1), 60, 0)
    b.learn(grid(1000), grid(0), 1.0, ALL)
    b.learn(grid(10**6), grid(0), 600.0, NONE)
    assert b.mean_pps[0, 0] == 1000 and b.learned_s[0, 0] == 1.0


def test_threshold_is_the_largest_of_floor_learned_and_minimum() -> None:
    b = Baseline((1, 1), 60, warmup_s=0)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        b.learn(grid(1000 + rng.normal(0, 100)), grid(8e6), 1.0, ALL)
    dev = math.sqrt(b.var_pps[0, 0])
    assert 50 < dev < 150
    mean = b.mean_pps[0, 0]
    # Calm measured: the deviation counts as at least a quarter of the mean.
    assert thresholds(b)[0] == mean + 4 * max(dev, MIN_DEV_RATIO * mean)
    assert thresholds(b, floor=50_000)[0] == 50_000
    assert thresholds(b, min_pps=80_000)[0] == 80_000
    assert thresholds(b, min_pps=1000)[1] >= 1000 * FULL_FRAME_BITS, "bps is never below min_pps full frames"


def test_during_warm_up_only_large_steps_count() -> None:
    b = Baseline((1, 1), 60, warmup_s=300)
    b.learn(grid(1000), grid(0), 1.0, ALL)
    assert not b.warm[0, 0]
    assert thresholds(b)[0] == 1000 + 4 * WARMUP_DEV_RATIO * 1000
    b.learn(grid(1000), grid(0), 299.0, ALL)
    assert b.warm[0, 0]
    assert thresholds(b)[0] == 1000 + 4 * MIN_DEV_RATIO * 1000


def test_remap_moves_rows_to_new_group_ids() -> None:
    b = Baseline((3, 2), 60, 0)
    b.learn(np.array([[0, 0], [5, 6], [7, 8]], dtype=float), np.zeros((3, 2)), 1.0, np.ones((3, 2), dtype=bool))
    moved = b.remap(5, {1: 4, 2: 1})
    assert moved.mean_pps.tolist() == [[0, 0], [7, 8], [0, 0], [0, 0], [5, 6]]
    assert moved.seen[4].all() and not moved.seen[2].any()
