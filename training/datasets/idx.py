"""MNIST-format IDX files (gzip-compressed or raw), and Fashion-MNIST from Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

from training.datasets.base import DatasetError, TensorImageDataset, check_split
from training.datasets.convert import match_channels, square_images

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_IDX_DTYPES = {0x08: np.uint8}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from e
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DatasetError(f"{path}: corrupt gzip data: {e}") from e
    return data


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (gzip or raw) as a numpy array; only unsigned-byte data, as in MNIST."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: not an IDX file: only {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file: bad magic number 0x{data[:4].hex()} (expected 0x0000TTNN)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unsupported IDX data type 0x{dtype_code:02x} (only 0x08, unsigned byte)")
    if not 1 <= ndim <= 4:
        raise DatasetError(f"{path}: unsupported IDX rank {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = header + math.prod(shape)
    if len(data) < expected:
        raise DatasetError(f"{path}: truncated: shape {shape} needs {expected} bytes, file has {len(data)}")
    if len(data) > expected:
        raise DatasetError(f"{path}: {len(data) - expected} unexpected bytes after the data of shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DatasetError(f"{images_path}: expected images of shape [N, H, W] or [N, H, W, 1|3], got {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected labels of shape [N], got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{images_path}: holds no images")
    return images, labels


def open_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    channels: int | None = None,
    name: str = "idx",
    class_names: list[str] | None = None,
) -> TensorImageDataset:
    images_path, labels_path = Path(images_path), Path(labels_path)
    images, labels = _idx_pair(images_path, labels_path)
    if class_names is not None and int(labels.max()) >= len(class_names):
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range for {len(class_names)} classes")
    num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    names = class_names if class_names is not None else [str(k) for k in range(num_classes)]
    images = match_channels(square_images(images, resolution), channels)
    return TensorImageDataset(
        name, torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), num_classes, names
    )


def open_fmnist(
    split: str = "train",
    *,
    path: str | os.PathLike[str] | None = None,
    resolution: int | None = None,
    channels: int | None = None,
) -> TensorImageDataset:
    """Fashion-MNIST (60000 train / 10000 test, 28x28 gray, 10 classes) from Debian's IDX files."""
    check_split(split)
    root = Path(path) if path is not None else Path(FMNIST_DIR)
    files = []
    for fname in FMNIST_FILES[split]:
        candidates = [root / fname, root / fname.removesuffix(".gz")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DatasetError(
                f"Fashion-MNIST file {root / fname} not found. Install Debian's package "
                f"(sudo apt-get install {FMNIST_PACKAGE}) or point --data-path (path=) at a directory holding "
                f"{', '.join(FMNIST_FILES[split])}."
            )
        files.append(found)
    return open_idx(
        files[0], files[1], resolution=resolution, channels=channels, name="fmnist", class_names=FMNIST_CLASSES
    )
