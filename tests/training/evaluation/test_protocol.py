"""Seed ranges by role, the FD bootstrap interval and mean +- sd over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.metrics import FeatureStats, frechet_distance_stats
from training.evaluation.protocol import (
    MIN_BOOTSTRAP_ROUNDS,
    SEED_RANGES,
    _fd_rows,
    _float64,
    bootstrap_fd,
    bootstrap_rounds,
    describe_seeds,
    mean_sd,
    seed_range,
)
from training.images import GRID_SEED


def test_ranges_are_disjoint_and_clear_of_earlier_seeds() -> None:
    val, test = SEED_RANGES["validation"], SEED_RANGES["test"]
    assert set(val).isdisjoint(test)
    for used in (range(0, 21_000), range(1_000_000, 1_001_000), range(GRID_SEED, GRID_SEED + 1000)):
        assert set(used).isdisjoint(val) and set(used).isdisjoint(test)


def test_seed_range_by_role_or_start() -> None:
    assert seed_range("test", 3) == range(200_000, 200_003)
    assert seed_range("validation", 10_000) == range(100_000, 110_000)
    assert seed_range("42", 2) == range(42, 44) and seed_range(7, 1) == range(7, 8)
    assert describe_seeds(seed_range("test", 10)) == "test range, seeds 200000-200009"
    assert "outside" in describe_seeds(range(0, 5))
    with pytest.raises(ValueError, match="unknown seed range"):
        seed_range("train", 3)
    with pytest.raises(ValueError, match="holds 50000"):
        seed_range("test", 50_001)
    with pytest.raises(ValueError):
        seed_range("-3", 2)


def test_bootstrap_interval_brackets_the_point_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 4))
    fake = rng.normal(loc=0.3, size=(2000, 4))
    fd = frechet_distance_stats(FeatureStats.of(real), FeatureStats.of(fake))
    wide = bootstrap_fd(real[:200], fake[:200], rounds=100, seed=1)
    narrow = bootstrap_fd(real, fake, rounds=100, seed=1)
    assert narrow.low <= fd <= narrow.high
    assert narrow.high - narrow.low < wide.high - wide.low
    assert bootstrap_fd(real, fake, rounds=20, seed=3) == bootstrap_fd(real, fake, rounds=20, seed=3)
    with pytest.raises(ValueError):
        bootstrap_fd(real, fake, level=1.5)


def test_mean_sd_over_seeds() -> None:
    s = mean_sd([0.466, 0.474, 0.527])
    assert s.mean == pytest.approx(0.489) and s.sd == pytest.approx(np.std([0.466, 0.474, 0.527], ddof=1))
    assert mean_sd([1.0]).sd == 0.0 and "n=3" in str(s)
    with pytest.raises(ValueError):
        mean_sd([])


@pytest.mark.parametrize("rows", [(30, 40), (600, 500)])
def test_bootstrap_fd_equals_frechet_distance_both_ways(rows) -> None:
    """The bootstrap's FD (through the rows when they are fewer than the dimensions, else through a Cholesky
    factor) is the metrics module's."""
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(rows[0], 64)), rng.normal(loc=0.2, scale=1.1, size=(rows[1], 64))
    expected = frechet_distance_stats(FeatureStats.of(real), FeatureStats.of(fake))
    assert _fd_rows(_float64(real), _float64(fake)) == pytest.approx(expected, rel=1e-6)  # singular S1: sqrt eps


def test_bootstrap_rounds_are_bounded_by_their_cost() -> None:
    assert bootstrap_rounds(200, 10_000, 10_000, 128) == 200
    assert bootstrap_rounds(200, 10_000, 10_000, 2048) == MIN_BOOTSTRAP_ROUNDS
    assert bootstrap_rounds(5, 10_000, 10_000, 2048) == 5
    assert bootstrap_rounds(200, 10_000, 10_000, 256) < 200
