"""The options of an evaluation run (sample counts, seeds, Heun NFEs, KID subsets, device) and its log callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from training.sampling import heun_steps_for_nfe

DEFAULT_NFE = (1, 3, 7, 15, 35)

Log = Callable[[str], None]


@dataclass
class EvalOptions:
    num_samples: int = 10000
    batch: int = 250
    seed: int = 0
    nfe: tuple[int, ...] = DEFAULT_NFE
    num_real: int | None = None  # reference images from the test split (None: all)
    grid: int = 100  # images kept per set for the sample grids
    curve: bool = True  # FD against images seen for fine-tune run dirs
    curve_samples: int | None = None  # samples per snapshot (None: num_samples)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    device: str = "cpu"
    reference_split: str = "test"  # the split samples are compared with; the other one gives the real floor

    def __post_init__(self) -> None:
        if self.num_samples < 4:
            raise ValueError("--num-samples must be at least 4")
        if self.batch < 1:
            raise ValueError("--batch must be at least 1")
        if self.reference_split not in ("train", "test"):
            raise ValueError(f"reference split must be train or test, got {self.reference_split!r}")
        for n in self.nfe:
            heun_steps_for_nfe(n)  # raises on even or non-positive NFE
