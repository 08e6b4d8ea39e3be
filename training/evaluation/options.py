"""The options of an evaluation run (sample counts, seed range, Heun NFEs, KID subsets, bootstrap, device) and its
log callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from training.evaluation.protocol import DEFAULT_BOOTSTRAP_ROUNDS, DEFAULT_REPORTED_SAMPLES, seed_range
from training.sampling import heun_steps_for_nfe

DEFAULT_NFE = (1, 3, 7, 15, 35)

Log = Callable[[str], None]


@dataclass
class EvalOptions:
    num_samples: int = DEFAULT_REPORTED_SAMPLES
    batch: int = 250
    seeds: str = "test"  # noise seeds: a role of training.evaluation.protocol (validation, test) or a start seed
    nfe: tuple[int, ...] = DEFAULT_NFE
    num_real: int | None = None  # reference images from the test split (None: all)
    grid: int = 100  # images kept per set for the sample grids
    curve: bool = True  # FD against images seen for fine-tune run dirs
    curve_samples: int | None = None  # samples per snapshot (None: num_samples)
    curve_kimg: tuple[float, ...] | None = None  # the snapshots nearest these fine-tune kimg (None: every snapshot)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    bootstrap: int = DEFAULT_BOOTSTRAP_ROUNDS  # rounds of the FD confidence interval (0: none)
    floor_seed: int = 0  # of the random real subset that gives the real-vs-real floor
    device: str = "cpu"
    reference_split: str = "test"  # the split samples are compared with; the other one gives the real floor
    sample_cache: str | None = None  # dir of cached teacher sets (training.evaluation.sample_cache); None: off
    teacher_metrics: str | None = None  # an earlier report whose teacher's best is the curves' target (no teacher here)

    def __post_init__(self) -> None:
        self.seeds = str(self.seeds)
        if self.num_samples < 4:
            raise ValueError("--num-samples must be at least 4")
        if self.curve_samples is not None and self.curve_samples < 4:
            raise ValueError("--curve-samples must be at least 4")
        if self.curve_kimg is not None and (not self.curve_kimg or min(self.curve_kimg) <= 0):
            raise ValueError("--curve-kimg takes positive fine-tune kimg, e.g. 6,12,30,60,120")
        if self.batch < 1:
            raise ValueError("--batch must be at least 1")
        if self.bootstrap != 0 and self.bootstrap < 2:
            raise ValueError("--bootstrap takes 0 (no interval) or at least 2 rounds")
        if self.reference_split not in ("train", "test"):
            raise ValueError(f"reference split must be train or test, got {self.reference_split!r}")
        for n in self.nfe:
            heun_steps_for_nfe(n)  # raises on even or non-positive NFE
        self.sample_seeds  # noqa: B018 -- raises on an unknown role or a count past the range
        self.curve_seeds  # noqa: B018

    @property
    def sample_seeds(self) -> range:
        """The noise seeds of every sample set: sample i of every model uses the i-th seed."""
        return seed_range(self.seeds, self.num_samples)

    @property
    def curve_seeds(self) -> range:
        """The noise seeds of each snapshot of a fine-tune run's curve: the first of the same range."""
        return seed_range(self.seeds, self.curve_samples or self.num_samples)
