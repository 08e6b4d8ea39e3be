"""Image sets to score and to compare with: a folder (or .zip) of images, an .npz array, or a data set split.

Every set yields float32 ``[N, C, H, W]`` batches in [-1, 1] and says how many images it holds, their size and,
where known, their class labels. An .npz holds uint8 images ``[N, H, W, C]`` under ``images`` (what
``python -m training.generate --npz`` writes, with ``labels``, -1 for none) or ``arr_0`` (the ADM / EDM
reference batches, with ``arr_1`` labels where present).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.datasets import SPLITS, FolderDataset, ImageDataset, open_dataset
from training.datasets.base import to_float


@dataclass
class ImageSet:
    """Images to extract features from, batch by batch."""

    description: str
    count: int
    resolution: int
    channels: int
    labels: np.ndarray | None  # int64 [N]; None: the set has no class labels
    num_classes: int  # classes of the data set (0: unlabelled)
    record: dict[str, Any]  # what a report or a statistics file records about the set
    conditional: bool | None = None  # made by a class-conditional model (None: not known)
    seeds: np.ndarray | None = None  # int64 [N] noise seeds, where the set records them (training.generate --npz)
    _dataset: ImageDataset | None = None
    _array: np.ndarray | None = None  # uint8 [N, H, W, C]

    def batches(self, batch: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        n = self.count if limit is None else min(limit, self.count)
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            if self._array is not None:
                yield to_float(torch.from_numpy(np.ascontiguousarray(self._array[start:stop])).permute(0, 3, 1, 2))
            else:
                assert self._dataset is not None
                yield self._dataset.get_batch(list(range(start, stop)))[0]


def read_npz_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(uint8 images [N, H, W, C], int64 labels [N] or None, class names) from an .npz, without pickles."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        key = "images" if "images" in f.files else "arr_0" if "arr_0" in f.files else None
        if key is None:
            raise ValueError(f"{path}: no 'images' (or 'arr_0') array; it holds {sorted(f.files)}")
        images = f[key]
        label_key = "labels" if "labels" in f.files else "arr_1" if "arr_1" in f.files else None
        labels = f[label_key].astype(np.int64) if label_key is not None else None
        names = [str(n) for n in f["class_names"].tolist()] if "class_names" in f.files else []
    if images.ndim == 3:  # [N, H, W] gray
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1] != images.shape[2]:
        raise ValueError(f"{path}: expected square uint8 images [N, H, W, 1 or 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images, got {images.dtype}")
    if labels is not None and (labels.shape != (len(images),) or (labels < 0).all()):
        labels = None  # one-hot tables, or -1 throughout: an unconditional model's set
    return images, labels, names


def read_npz_seeds(path: str | Path) -> np.ndarray | None:
    """The ``seeds`` array of an .npz (``python -m training.generate --npz`` writes one), else None."""
    with np.load(path, allow_pickle=False) as f:
        return f["seeds"].astype(np.int64) if "seeds" in f.files else None


def open_images(path: str | Path, resolution: int | None = None, channels: int | None = None) -> ImageSet:
    """The images to score: an .npz file or a folder / .zip of images (read in sorted name order, any
    subfolders; their names are not taken as classes)."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        images, labels, names = read_npz_images(path)
        if resolution not in (None, images.shape[1]) or channels not in (None, images.shape[3]):
            raise ValueError(
                f"{path}: images are {images.shape[1:]} (H, W, C), expected {resolution} px, {channels} ch"
            )
        num_classes = len(names) or (int(labels.max()) + 1 if labels is not None else 0)
        return ImageSet(
            f"{len(images)} images from {path.name}",
            len(images),
            images.shape[1],
            images.shape[3],
            labels,
            num_classes,
            {"images": str(path), "count": len(images)},
            conditional=labels is not None,
            seeds=read_npz_seeds(path),
            _array=images,
        )
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        ds = FolderDataset(path, resolution=resolution, channels=channels)
        return ImageSet(
            f"{len(ds)} images from {path.name}",
            len(ds),
            ds.resolution,
            ds.channels,
            None,
            0,
            {"images": str(path), "count": len(ds)},
            _dataset=ds,
        )
    raise FileNotFoundError(f"{path}: not a folder of images, a .zip or an .npz file")


def open_data(
    spec: str,
    split: str,
    data_path: str | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    num_real: int | None = None,
) -> ImageSet:
    """A data set split (``--data`` specs: fmnist, cifar10:DIR, a folder, ...), its first ``num_real`` images."""
    ds = open_dataset(spec, split=split, resolution=resolution, path=data_path, channels=channels)
    n = len(ds) if num_real is None else min(num_real, len(ds))
    labels = ds.labels[:n].numpy() if ds.num_classes > 0 else None
    split_name = "" if isinstance(ds, FolderDataset) else f"{split} "  # a folder has no splits: all of it
    return ImageSet(
        f"{n} {split_name}images of {spec}",
        n,
        ds.resolution,
        ds.channels,
        labels,
        ds.num_classes,
        {"spec": spec, "split": split if split_name else None, "count": n},
        _dataset=ds,
    )


@dataclass(frozen=True)
class RefSpec:
    """A ``--ref`` argument: a statistics file, an image set (folder or .npz), or a data set spec and split."""

    kind: str  # 'stats' | 'images' | 'data'
    value: str
    split: str | None = None  # for 'data': the split named after the last ':' (None: not given)


def is_stats_file(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as f:
        return "mu" in f.files and "meta" in f.files


def parse_ref(text: str) -> RefSpec:
    """``stats.npz`` | ``images.npz`` | ``DIR`` | ``SPEC`` | ``SPEC:SPLIT`` (``fmnist:test``, ``cifar10:DIR:train``)."""
    path = Path(text)
    if path.suffix == ".npz" and path.is_file():
        return RefSpec("stats" if is_stats_file(path) else "images", text)
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        return RefSpec("data", text, None)
    spec, sep, tail = text.rpartition(":")
    if sep and tail in SPLITS and spec:
        return RefSpec("data", spec, tail)
    return RefSpec("data", text, None)
