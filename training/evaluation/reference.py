"""The real images: the test split the samples are compared with, and a train subset as the real-vs-real floor."""

from __future__ import annotations

import numpy as np
import torch

from training.datasets import FolderDataset, open_dataset
from training.evaluation.options import EvalOptions, Log


def load_reference(
    data: str, data_path: str | None, resolution: int, channels: int, options: EvalOptions, log: Log
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``options.num_real`` (default: all) images of the reference split and their labels."""
    split = options.reference_split
    ref = open_dataset(data, split=split, resolution=resolution, path=data_path, channels=channels)
    n = len(ref) if options.num_real is None else min(options.num_real, len(ref))
    images, labels = ref.get_batch(list(range(n)))
    split_name = "" if isinstance(ref, FolderDataset) else f"{split} "  # a folder has no splits: all of it
    log(f"Reference: {n} {split_name}images of {data} at {resolution}x{resolution}")
    return images, labels


def other_split(split: str) -> str:
    """The split the real-vs-real floor draws from: the one the samples are not compared with."""
    return "test" if split == "train" else "train"


def class_ordered(labels: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """Indices whose labels run 0, 1, .., num_classes-1, 0, 1, .. (as the balanced samples do), where possible."""
    if num_classes <= 0:
        return torch.arange(min(count, len(labels)))
    pools = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    picked: list[int] = []
    for i in range(count):
        pool = pools[i % num_classes]
        if pool:
            picked.append(pool.pop(0))
    return torch.tensor(picked, dtype=torch.long)


def real_train_set(
    data: str, data_path: str | None, resolution: int, channels: int, count: int, seed: int, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of a split (the train split by default): the real-vs-real floor of each metric at
    this sample count."""
    train = open_dataset(data, split=split, resolution=resolution, path=data_path, channels=channels)
    count = min(count, len(train))
    idx = np.random.default_rng(seed).choice(len(train), count, replace=False)
    images, labels = train.get_batch(sorted(idx.tolist()))
    return images, labels
