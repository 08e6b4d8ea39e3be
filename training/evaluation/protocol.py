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
from typing import Any

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
        raise ValueError(
            f"the {role} range holds {len(full)} seeds ({full.start}-{full.stop - 1}), {count} asked: "
            "ask for fewer samples"
        )
    return full[:count]


def seed_role(seeds: range) -> str | None:
    """The role whose range holds all of ``seeds`` (None: outside both ranges)."""
    for role, full in SEED_RANGES.items():
        if len(seeds) and seeds.start >= full.start and seeds.stop <= full.stop:
            return role
    return None


def seeds_record(seeds: range) -> dict[str, Any]:
    """What metrics.json records of a figure's noise seeds: its role, first and last seed and count."""
    return {"role": seed_role(seeds), "first": seeds.start, "last": seeds.stop - 1, "count": len(seeds)}


def describe_seeds(seeds: range) -> str:
    """``"test range, seeds 200000-209999"``, or just the seeds for an explicit start."""
    for role, full in SEED_RANGES.items():
        if seeds.start >= full.start and seeds.stop <= full.stop:
            return f"{role} range, seeds {seeds.start}-{seeds.stop - 1}"
    return f"seeds {seeds.start}-{seeds.stop - 1} (outside the validation and test ranges)"


DEFAULT_BOOTSTRAP_ROUNDS = 200
MIN_BOOTSTRAP_ROUNDS = 20
# Floating-point work allowed for one interval (well under a minute of float64 on two busy cores): 200 rounds of
# 10,000 + 10,000 128-d classifier features fit; 2048-d Inception features get MIN_BOOTSTRAP_ROUNDS.
BOOTSTRAP_BUDGET_FLOPS = 2e11


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    rounds: int
    shift: float = 0.0  # the bootstrap mean minus the point estimate, taken off both ends

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "level": self.level, "rounds": self.rounds, "shift": self.shift}


def _round_flops(real_rows: int, fake_rows: int, dim: int) -> float:
    """The work of one FD between row sets: two covariances and eigendecompositions of ``dim`` x ``dim``, or the
    singular values of the ``real_rows`` x ``fake_rows`` cross-product, whichever ``_fd_rows`` takes."""
    feature_space = 2.0 * (real_rows + fake_rows) * dim * dim + 30.0 * dim**3
    sample_space = 2.0 * real_rows * fake_rows * dim + 10.0 * real_rows * fake_rows * min(real_rows, fake_rows)
    return min(feature_space, sample_space)


def bootstrap_rounds(
    requested: int, real_rows: int, fake_rows: int, dim: int, budget: float = BOOTSTRAP_BUDGET_FLOPS
) -> int:
    """``requested`` rounds, fewer where they would cost more than ``budget`` flops (never below
    ``MIN_BOOTSTRAP_ROUNDS`` or above ``requested``). Deterministic, so a report repeats exactly."""
    per_round = _round_flops(real_rows, fake_rows, dim)
    return max(min(requested, MIN_BOOTSTRAP_ROUNDS), min(requested, int(budget // per_round)))


def _float64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _fd_rows(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD between two float64 row sets, fast enough to repeat a few hundred times (torch's CPU matmul is several
    times faster than numpy's on a busy machine).

    With at least as many rows as dimensions: the covariances, then tr((S1 S2)^(1/2)) from the eigenvalues of
    L^T S2 L for the Cholesky factor S1 = L L^T (the spectrum of S1 S2; one Cholesky and one eigenvalue-only
    decomposition instead of two full ones), falling back to ``frechet_distance`` where S1 is singular. With
    fewer rows than dimensions: through the rows, as the nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)) for the
    centred rows A, B (the same sum of square roots).
    """
    n1, n2, d = len(real), len(fake), real.shape[1]
    mu1, mu2 = real.mean(dim=0), fake.mean(dim=0)
    a, b = real - mu1, fake - mu2
    diff = float(((mu1 - mu2) ** 2).sum())
    if 2.0 * n1 * n2 * d + 10.0 * n1 * n2 * min(n1, n2) < 2.0 * (n1 + n2) * d * d + 30.0 * d**3:
        cross = float(torch.linalg.svdvals(a @ b.T).sum()) / float(np.sqrt((n1 - 1) * (n2 - 1)))
        value = diff + float((a * a).sum()) / (n1 - 1) + float((b * b).sum()) / (n2 - 1) - 2 * cross
        return max(value, 0.0)
    s1, s2 = a.T @ a / (n1 - 1), b.T @ b / (n2 - 1)
    low, info = torch.linalg.cholesky_ex(s1)
    if int(info) != 0:  # singular: the eigendecomposition route
        stats = [FeatureStats(m.numpy(), c.numpy(), n) for m, c, n in ((mu1, s1, n1), (mu2, s2, n2))]
        return frechet_distance_stats(*stats)
    middle = low.T @ s2 @ low
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2)
    value = diff + float(torch.trace(s1) + torch.trace(s2)) - 2 * float(eig.clamp(min=0).sqrt().sum())
    return max(value, 0.0)


def bootstrap_fd(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    rounds: int = DEFAULT_BOOTSTRAP_ROUNDS,
    level: float = 0.95,
    seed: int = 0,
    real_stats: FeatureStats | None = None,
) -> Interval:
    """Percentile bootstrap interval of FD, recentred on the point estimate: both sets resampled with replacement
    ``rounds`` times, and the percentiles moved by the bootstrap mean's excess over the estimate. Resampling with
    replacement repeats rows, which inflates FD by about its own noise floor; uncorrected, the interval of a
    high-dimensional FD can lie wholly above the estimate.

    ``real_stats``: the reference moments over more images than ``real_features`` holds (a statistics file keeps
    a subset of the rows); then only the fake set is resampled and the reference is held fixed.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if rounds < 2:
        raise ValueError(f"need at least 2 bootstrap rounds, got {rounds}")
    real, fake = _float64(real_features), _float64(fake_features)
    rng = np.random.default_rng(seed)
    values = np.empty(rounds)
    for i in range(rounds):
        if real_stats is not None:
            f = fake[torch.from_numpy(rng.integers(0, len(fake), len(fake)))].numpy()
            values[i] = frechet_distance_stats(real_stats, FeatureStats.of(f))
        else:
            r = real[torch.from_numpy(rng.integers(0, len(real), len(real)))]
            values[i] = _fd_rows(r, fake[torch.from_numpy(rng.integers(0, len(fake), len(fake)))])
    if real_stats is not None:
        point = frechet_distance_stats(real_stats, FeatureStats.of(fake.numpy()))
    else:
        point = _fd_rows(real, fake)
    shift = float(values.mean() - point)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail]) - shift
    return Interval(max(float(low), 0.0), max(float(high), 0.0), level, rounds, shift)


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float
    count: int

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.sd:.2g} (n={self.count})"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "count": self.count}


def mean_sd(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over fine-tune seeds."""
    if not values:
        raise ValueError("no values")
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return Spread(float(arr.mean()), sd, len(arr))
