"""What every inference backend provides: seeded noise in, uint8 NHWC images out."""

from __future__ import annotations

import bisect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from service.config import Settings
from training.checkpoint import ModelConfig
from training.sampling import seeded_noise


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which container CPU sets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BackendError(RuntimeError):
    """A backend that cannot be built here (missing file, package or device)."""


class Backend(ABC):
    """One loaded model on one runtime. ``run`` is only ever called from the single inference thread."""

    name: ClassVar[str]
    #: Batch sizes the backend runs fastest at (TensorRT profiles, CUDA graphs); None: any size, no padding.
    preferred_batch_sizes: tuple[int, ...] | None = None
    #: Largest batch the runtime accepts (a TensorRT profile's top); None: no limit.
    max_supported_batch: int | None = None

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        self.model_dir = Path(model_dir)
        self.config = config
        self.settings = settings
        self.label_dim = config.label_dim
        self.img_shape = config.img_shape

    @abstractmethod
    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        """z [N,C,H,W] float32, labels int64 [N] (None for unconditional models) -> uint8 [N,H,W,C] numpy."""

    @property
    def cpu_threads(self) -> int | None:
        """CPU threads a batch keeps busy while it computes; None when it computes on a device (GPU)."""
        return None

    @property
    def spins_between_runs(self) -> bool:
        """Whether the runtime's worker threads spin-wait after a run, so that a gap between batches burns CPU."""
        return False

    def padded_size(self, n: int) -> int:
        sizes = self.preferred_batch_sizes
        if not sizes:
            return n
        i = bisect.bisect_left(sizes, n)
        return sizes[i] if i < len(sizes) else n

    def generate(self, seeds: Sequence[int], labels: Sequence[int] | None) -> np.ndarray:
        """Noise from each image's own seed (so a batch never changes an image), padded to a preferred size."""
        n = len(seeds)
        size = self.padded_size(n)
        if size > n:
            seeds = [*seeds, *([0] * (size - n))]
            labels = None if labels is None else [*labels, *([0] * (size - n))]
        z = seeded_noise(seeds, self.img_shape)
        lab = np.asarray(labels, dtype=np.int64) if self.label_dim and labels is not None else None
        out = self.run(z, lab)
        return out[:n] if size > n else out

    def warmup_sizes(self, max_batch_size: int) -> list[int]:
        if self.preferred_batch_sizes:
            return [s for s in self.preferred_batch_sizes if s <= max(max_batch_size, self.preferred_batch_sizes[0])]
        return list(range(1, max_batch_size + 1))

    def warmup(self, max_batch_size: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Run every batch size the batcher may form once (cuDNN/ORT/TensorRT pick kernels per shape).

        ``should_stop`` is asked between sizes so that a shutdown during warm-up does not wait for all of them.
        """
        for size in self.warmup_sizes(max_batch_size):
            if should_stop():
                return
            self.generate(list(range(size)), [i % max(self.label_dim, 1) for i in range(size)])

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""
