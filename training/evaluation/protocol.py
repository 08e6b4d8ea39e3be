"""The evaluation protocol: which noise seeds each figure may use, and how its uncertainty is reported.

A figure on which a choice was made (a snapshot, a fine-tune seed, a hyper-parameter) flatters the winner. So
seeds come in disjoint ranges by role: every choice is made on the *validation* range, every reported figure
is measured on the *test* range, and reports name the range of each figure. Neither range overlaps the seeds
the project used before it had this protocol (0-20999 for samples, 1000000-1000999 for distillation pairs) or
the sample-grid seeds.

Uncertainty: a bootstrap confidence interval of FD over both sample sets, and mean +- sd over fine-tune seeds
(never the best seed alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.evaluation.metrics import FeatureStats, frechet_distance_stats

SEED_RANGES: dict[str, range] = {
    "validation": range(100_000, 150_000),
    "test": range(200_000, 250_000),
}
DEFAULT_REPORTED_SAMPLES = 10_000


def seed_range(spec: str | int, count: int) -> range:
    """The first ``count`` seeds of a role's range (``validation``, ``test``) or from an explicit start seed."""
    if count < 1:
        raise ValueError(f"need at least one seed, got {count}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().lstrip("-").isdigit()):
        start = int(spec)
        if start < 0:
            raise ValueError(f"seeds must be non-negative, got {start}")
        return range(start, start + count)
    role = spec.strip().lower()
    if role not in SEED_RANGES:
        raise ValueError(f"unknown seed range {spec!r}; choose {', '.join(SEED_RANGES)} or a start seed")
    full = SEED_RANGES[role]
    if count > len(full):
        raise ValueError(f"the {role} range holds {len(full)} seeds, {count} asked")
    return full[:count]


def describe_seeds(seeds: range) -> str:
    """``"test range, seeds 200000-209999"``, or just the seeds for an explicit start."""
    for role, full in SEED_RANGES.items():
        if seeds.start >= full.start and seeds.stop <= full.stop:
            return f"{role} range, seeds {seeds.start}-{seeds.stop - 1}"
    return f"seeds {seeds.start}-{seeds.stop - 1} (outside the validation and test ranges)"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    rounds: int


def bootstrap_fd(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of FD: both sets resampled with replacement, ``rounds`` times."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if rounds < 2:
        raise ValueError(f"need at least 2 bootstrap rounds, got {rounds}")
    real = np.asarray(real_features.cpu() if isinstance(real_features, torch.Tensor) else real_features, np.float64)
    fake = np.asarray(fake_features.cpu() if isinstance(fake_features, torch.Tensor) else fake_features, np.float64)
    rng = np.random.default_rng(seed)
    values = np.empty(rounds)
    for i in range(rounds):
        r = real[rng.integers(0, len(real), len(real))]
        f = fake[rng.integers(0, len(fake), len(fake))]
        values[i] = frechet_distance_stats(FeatureStats.of(r), FeatureStats.of(f))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), level, rounds)


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float
    count: int

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.sd:.2g} (n={self.count})"


def mean_sd(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over fine-tune seeds."""
    if not values:
        raise ValueError("no values")
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return Spread(float(arr.mean()), sd, len(arr))
