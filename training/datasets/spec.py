"""Data set specs (``--data``): which reader opens which spec.

``open_dataset(spec)`` understands:

- ``fmnist`` / ``fmnist:DIR``: Fashion-MNIST from the IDX ``.gz`` files of Debian's ``dataset-fashion-mnist``
  package (default dir ``/usr/share/datasets/fashion-mnist``, or ``path=``);
- ``idx:IMAGES,LABELS``: any MNIST-format IDX pair, gzip-compressed or raw;
- ``cifar10:DIR`` (or ``cifar10`` with ``path=``): CIFAR-10 python batches, read by a restricted unpickler
  (a directory, a ``cifar-10-batches-py`` parent, or the ``cifar-10-python.tar.gz`` archive itself);
- a directory or ``.zip`` of images of any size and mode: class subfolders become labels (sorted names), an
  EDM ``dataset.json`` label list wins when present; images are resized (shorter side) and center-cropped;
- ``synthetic:N``: deterministic simple shapes, 10 classes, for tests.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from training.datasets.base import DatasetError, ImageDataset, check_split
from training.datasets.cifar import open_cifar10
from training.datasets.folder import FolderDataset
from training.datasets.idx import open_fmnist, open_idx
from training.datasets.synthetic import open_synthetic


def open_dataset(
    spec: str,
    *,
    split: str = "train",
    resolution: int | None = None,
    path: str | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Open a data set by spec (see the module docstring). ``resolution=None`` keeps the native size.

    Image folders, zips and IDX pairs have no split: every split gives the whole set (as EDM's FID reference).
    ``channels`` (1 or 3) forces gray or RGB (default: native; folders infer it, all-gray -> 1).
    """
    check_split(split)
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    scheme, sep, arg = spec.partition(":")
    if scheme in ("fmnist", "fashion-mnist") and (sep or not Path(spec).exists()):
        return open_fmnist(split, path=arg or path, resolution=resolution, channels=channels)
    if scheme == "cifar10" and (sep or not Path(spec).exists()):
        if not (arg or path):
            raise DatasetError("cifar10 needs the directory of its python batches: cifar10:DIR or --data-path DIR")
        return open_cifar10(arg or path or "", split, resolution=resolution, channels=channels)
    if scheme == "idx" and sep:
        files = arg.split(",")
        if len(files) != 2 or not all(files):
            raise DatasetError(f"{spec!r}: expected idx:IMAGES_FILE,LABELS_FILE")
        return open_idx(files[0], files[1], resolution=resolution, channels=channels)
    if scheme == "synthetic" and sep:
        try:
            n = int(arg)
        except ValueError:
            raise DatasetError(f"{spec!r}: expected synthetic:N with N an integer") from None
        return open_synthetic(n, split, resolution=resolution, channels=channels)
    p = Path(spec)
    if p.is_dir() or (p.is_file() and zipfile.is_zipfile(p)):
        return FolderDataset(p, resolution=resolution, channels=channels)
    if p.is_file():
        raise DatasetError(f"{p}: not a zip file or directory of images")
    raise DatasetError(
        f"{spec!r}: no such file or directory, and not a known data set "
        "(fmnist, idx:IMAGES,LABELS, cifar10:DIR, synthetic:N, an image folder or .zip)"
    )
