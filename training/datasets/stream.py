"""A deterministic, resumable mini-batch stream: per-epoch shuffles, x-flips and rank sharding."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from training.datasets.base import ImageDataset


def _epoch_seed(seed: int, epoch: int, what: str) -> int:
    digest = hashlib.blake2b(f"onestep:{what}:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchStream:
    """Endless, deterministic, resumable mini-batches.

    The stream is the concatenation of per-epoch permutations (epoch e's from ``(seed, e)``), cut into global
    batches of ``batch_size``; a batch may straddle two epochs, so every image is seen once per epoch whatever
    the batch size. Rank r takes slots ``[r*B, (r+1)*B)`` of every global batch (B = batch_size // world_size),
    so the ranks together see exactly the single-process batch. X-flips are drawn per epoch slot, so they too
    do not depend on the world size. ``state_dict()`` gives the global ``{epoch, position}``; loading it resumes
    mid-epoch with the same batches (even at a different world size, for the same global batch size).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        xflip: bool = False,
    ) -> None:
        if len(dataset) < 1:
            raise ValueError("BatchStream needs a non-empty dataset")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world size {world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of world_size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.per_rank = batch_size // world_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.xflip = xflip
        self.epoch = 0
        self.position = 0
        self._orders: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if epoch not in self._orders:
            n = len(self.dataset)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, "perm")))
            flips = None
            if self.xflip:
                g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, "xflip"))
                flips = torch.rand(n, generator=g) < 0.5
            for old in [e for e in self._orders if e < epoch - 1]:
                del self._orders[old]
            self._orders[epoch] = (perm, flips)
        return self._orders[epoch]

    def _slots(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dataset indices (and flips) of ``count`` slots from ``start`` slots past the current position."""
        n = len(self.dataset)
        epoch, pos = self.epoch + (self.position + start) // n, (self.position + start) % n
        idx, flips = [], []
        while count > 0:
            perm, flip = self._order(epoch)
            take = min(count, n - pos)
            idx.append(perm[pos : pos + take])
            if flip is not None:
                flips.append(flip[pos : pos + take])
            count -= take
            epoch, pos = epoch + 1, 0
        return torch.cat(idx), (torch.cat(flips) if flips else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices, flips = self._slots(self.rank * self.per_rank, self.per_rank)
        images, labels = self.dataset.get_batch(indices)
        if flips is not None and bool(flips.any()):
            images[flips] = images[flips].flip(-1)
        total = self.position + self.batch_size
        n = len(self.dataset)
        self.epoch, self.position = self.epoch + total // n, total % n
        return images, labels

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "dataset_size": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(self.dataset)
        if "dataset_size" in state and int(state["dataset_size"]) != n:
            raise ValueError(f"cannot resume: the stream was over {state['dataset_size']} images, this set has {n}")
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"cannot resume: the stream used seed {state['seed']}, this one uses {self.seed}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < n:
            raise ValueError(f"bad stream state epoch={epoch} position={position} for {n} images")
        self.epoch, self.position = epoch, position
        self._orders.clear()
