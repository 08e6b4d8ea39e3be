"""CIFAR-10 python batches, read by a restricted unpickler that never runs code from the file."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from training.datasets.base import DatasetError, TensorImageDataset, check_split
from training.datasets.convert import match_channels, square_images

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1'); allow exactly that.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, whatever module it lives in
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer (pickle protocol 5)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    for builtin in (dict, list, str, bytes, int):
        allowed[("builtins", builtin.__name__)] = builtin
        allowed[("__builtin__", builtin.__name__)] = builtin
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only plain containers and numpy array reconstruction; any other global is refused by name."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle data that may hold only dicts, lists, str, bytes, numbers and numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{source}: not a plain data pickle: {e}") from e
    except Exception as e:  # a malformed stream raises many kinds of errors
        raise DatasetError(f"{source}: corrupt pickle: {type(e).__name__}: {e}") from e


def _get(d: dict, key: str, source: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetError(f"{source}: missing key {key!r}")


def _read_cifar_files(root: Path, names: list[str]) -> dict[str, tuple[bytes | None, str]]:
    """The named batch files (None when absent) from a directory or the cifar-10-python.tar.gz archive."""
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    out: dict[str, tuple[bytes | None, str]] = {}
    if root.is_dir():
        for name in names:
            try:
                out[name] = ((root / name).read_bytes(), str(root / name))
            except FileNotFoundError:
                out[name] = (None, str(root / name))
            except OSError as e:
                raise DatasetError(f"{root / name}: cannot read: {e}") from e
        return out
    if not root.is_file():
        raise DatasetError(f"{root}: CIFAR-10 directory not found (expected data_batch_1..5, test_batch)")
    try:
        with tarfile.open(root, "r:*") as tar:
            members = {PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                f = tar.extractfile(members[name]) if name in members else None
                out[name] = (f.read() if f is not None else None, f"{root}:{name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{root}: not a readable CIFAR-10 directory or archive: {e}") from e
    return out


def open_cifar10(
    root: str | os.PathLike[str], split: str = "train", *, resolution: int | None = None, channels: int | None = None
) -> TensorImageDataset:
    """CIFAR-10 python batches (32x32 RGB, 10 classes) without ever running plain ``pickle.load``."""
    check_split(split)
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    files = _read_cifar_files(Path(root), [*names, "batches.meta"])
    all_images, all_labels = [], []
    for name in names:
        data, where = files[name]
        if data is None:
            raise DatasetError(f"{where}: CIFAR-10 batch file not found")
        batch = safe_unpickle(data, where)
        if not isinstance(batch, dict):
            raise DatasetError(f"{where}: expected a dict, got {type(batch).__name__}")
        images = _get(batch, "data", where)
        labels = _get(batch, "labels", where)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
            raise DatasetError(f"{where}: 'data' must be a uint8 array [N, 3072], got {type(images).__name__}")
        if images.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{where}: 'data' rows hold {images.shape[1]} values, expected 3072 (3x32x32)")
        try:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{where}: 'labels' is not a list of integers") from e
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DatasetError(f"{where}: label {int(labels.max())} out of range 0..9")
        all_images.append(images.reshape(-1, 3, 32, 32))
        all_labels.append(labels)
    class_names = list(CIFAR10_CLASSES)
    meta, where = files["batches.meta"]
    if meta is not None:
        meta_dict = safe_unpickle(meta, where)
        raw = meta_dict.get(b"label_names", meta_dict.get("label_names")) if isinstance(meta_dict, dict) else None
        if not isinstance(raw, list) or len(raw) != 10:
            raise DatasetError(f"{where}: expected 'label_names', a list of 10 names")
        class_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw]
    images = match_channels(square_images(np.concatenate(all_images), resolution), channels)
    return TensorImageDataset(
        "cifar10", torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.concatenate(all_labels)),
        10, class_names,
    )  # fmt: skip
