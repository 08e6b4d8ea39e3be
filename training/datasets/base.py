"""The data set type every reader returns: float32 ``[C, H, W]`` images in ``[-1, 1]`` with int labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A data file that is missing, corrupt or of the wrong format; the message names the file and the problem."""


def check_split(split: str) -> None:
    """Readers with a train/test split accept only these names; the others accept them and ignore them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] in 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class ImageDataset(torch.utils.data.Dataset):
    """Images as float32 ``[C, H, W]`` in ``[-1, 1]`` with int labels; ``num_classes == 0`` means unconditional.

    ``labels`` holds every label (int64 [N]) so that callers can count classes without loading images.
    """

    name: str
    resolution: int
    channels: int
    num_classes: int
    class_names: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load_uint8(self, i: int) -> torch.Tensor:
        """Image i as uint8 [C, H, W]."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = self._check_index(i)
        return to_float(self.load_uint8(i)), int(self.labels[i])

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, C, H, W] float32 in [-1, 1] and labels int64 [N]."""
        idx = self._index_tensor(indices)
        images = [self.load_uint8(int(i)) for i in idx]
        stacked = torch.stack(images) if images else torch.empty(0, *self.image_shape, dtype=torch.uint8)
        return to_float(stacked), self.labels[idx]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def _check_index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} ({n} images)")
        return i % n

    def _index_tensor(self, indices: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"batch index out of range for {self.name} ({n} images)")
        return idx % max(n, 1)

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.image_shape}, {kind})"


class TensorImageDataset(ImageDataset):
    """An in-memory set: uint8 images [N, C, H, W], converted to float per batch."""

    def __init__(
        self, name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, class_names: list[str]
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"{name}: images must be uint8 [N, C, R, R], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.name = name
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.channels = int(images.shape[1])
        self.resolution = int(images.shape[2])
        self.num_classes = num_classes
        self.class_names = list(class_names)

    def load_uint8(self, i: int) -> torch.Tensor:
        return self.images[i]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._index_tensor(indices)
        return to_float(self.images[idx]), self.labels[idx]
