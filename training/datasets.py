"""Image data sets and a deterministic, resumable mini-batch stream.

``open_dataset(spec)`` understands:

- ``fmnist`` / ``fmnist:DIR``: Fashion-MNIST from the IDX ``.gz`` files of Debian's ``dataset-fashion-mnist``
  package (default dir ``/usr/share/datasets/fashion-mnist``, or ``path=``);
- ``idx:IMAGES,LABELS``: any MNIST-format IDX pair, gzip-compressed or raw;
- ``cifar10:DIR`` (or ``cifar10`` with ``path=``): CIFAR-10 python batches, read by a restricted unpickler
  (a directory, a ``cifar-10-batches-py`` parent, or the ``cifar-10-python.tar.gz`` archive itself);
- a directory or ``.zip`` of images of any size and mode: class subfolders become labels (sorted names), an
  EDM ``dataset.json`` label list wins when present; images are resized (shorter side) and center-cropped;
- ``synthetic:N``: deterministic simple shapes, 10 classes, for tests.

Every item is float32 ``[C, H, W]`` in ``[-1, 1]`` plus an int label (0 for unconditional sets).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pickle
import tarfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A data file that is missing, corrupt or of the wrong format; the message names the file and the problem."""


# ---------------------------------------------------------------- base classes


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


# ---------------------------------------------------------------- image conversion


def _resize_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` (Lanczos down, bicubic up), then center-crop a square."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / min(w, h)
    if scale != 1:
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        img = img.resize(size, resample)
        w, h = size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def _convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB'; transparency is composited on white, 16-bit gray keeps its top byte."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def image_to_uint8(img: Image.Image, channels: int, resolution: int) -> torch.Tensor:
    """A PIL image -> uint8 tensor [channels, resolution, resolution]."""
    img = _resize_crop(_convert_mode(img, channels), resolution)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _resize_stack(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, C, R, R] through PIL, one image at a time."""
    n, c = images.shape[:2]
    if images.shape[2:] == (resolution, resolution):
        return images
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        if c == 1:
            img = Image.fromarray(images[i, 0], "L")
        else:
            img = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)), "RGB")
        arr = np.asarray(_resize_crop(img, resolution), dtype=np.uint8)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


# ---------------------------------------------------------------- IDX (MNIST format)

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


def _match_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 [N, C, H, W] -> ``channels`` (gray replicated to RGB, RGB to ITU-R 601 luma as PIL does)."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    luma = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]


def _square(images: np.ndarray, resolution: int | None) -> np.ndarray:
    h, w = images.shape[2:]
    if resolution is None:
        if h == w:
            return images
        resolution = min(h, w)
    return _resize_stack(images, resolution)


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
    images = _match_channels(_square(images, resolution), channels)
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
    _check_split(split)
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


# ---------------------------------------------------------------- CIFAR-10 python batches


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
    _check_split(split)
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
    images = _match_channels(_square(np.concatenate(all_images), resolution), channels)
    return TensorImageDataset(
        "cifar10", torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.concatenate(all_labels)),
        10, class_names,
    )  # fmt: skip


# ---------------------------------------------------------------- image folders and zips


class _FileSource:
    """Lists and reads files under a directory or inside a zip (paths relative, '/'-separated)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.is_zip = root.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._lock = threading.Lock()
        if self.is_zip:
            self._open_zip()

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.root)
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f"{self.root}: not a readable zip file: {e}") from e
        return self._zip

    def list(self) -> list[str]:
        if self.is_zip:
            return [i.filename for i in self._open_zip().infolist() if not i.is_dir()]
        out, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            seen.add(os.path.realpath(dirpath))  # symlinked folders are followed, symlink loops are not
            dirnames[:] = [
                d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in seen
            ]
            rel = Path(dirpath).relative_to(self.root)
            out.extend((rel / f).as_posix() for f in filenames)
        return out

    def where(self, name: str) -> str:
        return f"{self.root}:{name}" if self.is_zip else str(self.root / name)

    def peek(self, name: str) -> tuple[tuple[int, int], str]:
        """(size, mode) of an image from its header only."""
        where = self.where(name)
        try:
            if self.is_zip:
                with self._lock, self._open_zip().open(name) as f:
                    return _peek_image(f, where)
            with open(self.root / name, "rb") as f:
                return _peek_image(f, where)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise DatasetError(f"{where}: cannot read: {e}") from e

    def read(self, name: str) -> bytes:
        try:
            if self.is_zip:
                with self._lock:
                    return self._open_zip().read(name)
            return (self.root / name).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise DatasetError(f"{self.where(name)}: cannot read: {e}") from e

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        return {"root": self.root, "is_zip": self.is_zip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]


def _open_image(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation, as photo viewers show it
            img = ImageOps.exif_transpose(img)
        return img
    except UnidentifiedImageError:
        raise DatasetError(f"{where}: not an image, or a corrupt one (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: cannot decode image: {e}") from e


def _peek_image(f: IO[bytes], where: str) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(f) as img:
            return img.size, img.mode
    except UnidentifiedImageError:
        raise DatasetError(f"{where}: not an image, or a corrupt one (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: not a readable image: {e}") from e


def _is_image(name: str) -> bool:
    parts = PurePosixPath(name).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _strip_common_dirs(files: list[str]) -> tuple[str, list[str]]:
    """Drop leading folders that every file shares (a zip of 'afhq/' holds 'afhq/cat/...')."""
    prefix = ""
    parts = [PurePosixPath(f).parts for f in files]
    while parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        prefix += parts[0][0] + "/"
        parts = [p[1:] for p in parts]
    return prefix, ["/".join(p) for p in parts]


class FolderDataset(ImageDataset):
    """Images in a directory tree or zip, decoded lazily (with a bounded LRU cache) on a few threads."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        resolution: int | None = None,
        channels: int | None = None,
        cache_bytes: int = 512 << 20,
        threads: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DatasetError(f"{self.root}: no such directory or zip file")
        self.source = _FileSource(self.root)
        self.name = self.root.name.removesuffix(".zip") or "images"
        all_files = sorted(self.source.list())
        prefix, rel = _strip_common_dirs([f for f in all_files if _is_image(f)])
        if not rel:
            raise DatasetError(f"{self.root}: holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.files = [prefix + r for r in rel]
        labels, self.class_names = self._labels(prefix, rel, all_files)
        self.num_classes = len(self.class_names)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        sizes, modes = [], set()
        for f in self.files:
            size, mode = self.source.peek(f)
            sizes.append(size)
            modes.add(mode)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels or (1 if modes <= _GRAY_MODES else 3)
        self.resolution = int(resolution) if resolution is not None else min(sizes[0])
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_limit = cache_bytes
        self._cache_size = 0
        self._cache_lock = threading.Lock()
        self._threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    def _labels(self, prefix: str, rel: list[str], all_files: list[str]) -> tuple[list[int], list[str]]:
        # EDM dataset_tool layout: dataset.json {"labels": [[relative path, label], ...] | null} beside the
        # image folders, possibly above the folders that every image shares.
        levels = [""] + ["/".join(prefix.split("/")[: k + 1]) + "/" for k in range(prefix.count("/"))]
        base = next((lv for lv in reversed(levels) if lv + "dataset.json" in all_files), None)
        if base is not None:
            meta = base + "dataset.json"
            where = self.source.where(meta)
            try:
                raw = json.loads(self.source.read(meta)).get("labels")
            except (ValueError, AttributeError) as e:
                raise DatasetError(f"{where}: not a JSON object with 'labels': {e}") from e
            if raw is None:
                return [0] * len(rel), []
            try:
                table = {str(f): int(y) for f, y in raw}
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{where}: 'labels' must be a list of [file, int] pairs") from e
            names = [f[len(base) :] for f in self.files]
            missing = [r for r in names if r not in table]
            if missing:
                raise DatasetError(f"{where}: no label for {missing[0]} ({len(missing)} images unlabelled)")
            labels = [table[r] for r in names]
            if min(labels) < 0:
                raise DatasetError(f"{where}: negative label {min(labels)}")
            return labels, [str(k) for k in range(max(labels) + 1)]
        tops = [r.split("/", 1)[0] if "/" in r else None for r in rel]
        if all(t is None for t in tops):
            return [0] * len(rel), []
        loose = [r for r, t in zip(rel, tops, strict=True) if t is None]
        if loose:
            raise DatasetError(
                f"{self.source.where(prefix + loose[0])}: images sit both at the top level and in class "
                f"subfolders; move the {len(loose)} loose image(s) into a class folder"
            )
        names = sorted(set(tops))  # type: ignore[arg-type]
        if len(names) == 1:
            return [0] * len(rel), []
        index = {n: k for k, n in enumerate(names)}
        return [index[t] for t in tops], names  # type: ignore[index]

    def _decode(self, i: int) -> torch.Tensor:
        name = self.files[i]
        img = _open_image(self.source.read(name), self.source.where(name))
        try:
            x = image_to_uint8(img, self.channels, self.resolution)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.source.where(name)}: cannot convert image: {e}") from e
        if x.numel() <= self._cache_limit:
            with self._cache_lock:
                if i not in self._cache:
                    self._cache[i] = x
                    self._cache_size += x.numel()
                while self._cache_size > self._cache_limit:
                    _, old = self._cache.popitem(last=False)
                    self._cache_size -= old.numel()
        return x

    def _cached(self, ids: list[int]) -> list[torch.Tensor | None]:
        with self._cache_lock:
            out = [self._cache.get(i) for i in ids]
            for i, x in zip(ids, out, strict=True):
                if x is not None:
                    self._cache.move_to_end(i)
        return out

    def load_uint8(self, i: int) -> torch.Tensor:
        hit = self._cached([i])[0]
        return hit if hit is not None else self._decode(i)

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._index_tensor(indices)
        ids = idx.tolist()
        images = self._cached(ids)
        misses = [k for k, x in enumerate(images) if x is None]
        if len(misses) > 1 and self._threads > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="onestep-data")
            decoded = list(self._pool.map(self._decode, [ids[k] for k in misses]))
        else:
            decoded = [self._decode(ids[k]) for k in misses]
        for k, x in zip(misses, decoded, strict=True):
            images[k] = x
        stacked = torch.stack(images) if images else torch.empty(0, *self.image_shape, dtype=torch.uint8)  # type: ignore[arg-type]
        return to_float(stacked), self.labels[idx]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get an empty cache and no thread pool
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _cache_size=0, _cache_lock=None, _pool=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_lock = threading.Lock()


# ---------------------------------------------------------------- synthetic shapes


def open_synthetic(
    n: int, split: str = "train", *, resolution: int | None = None, channels: int | None = None
) -> TensorImageDataset:
    """N deterministic images of 10 shape classes (label i % 10) with jittered position, size and brightness."""
    _check_split(split)
    if n < 1:
        raise DatasetError(f"synthetic:{n}: the number of images must be >= 1")
    res = resolution or 16
    c = channels or 1
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(n) % 10
    center = (torch.rand(n, 2, generator=g) - 0.5) * 0.4
    size = 0.35 + 0.25 * torch.rand(n, generator=g)
    level = 0.7 + 0.3 * torch.rand(n, generator=g)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    x = (xx[None] - center[:, 0, None, None]) / size[:, None, None]
    y = (yy[None] - center[:, 1, None, None]) / size[:, None, None]
    r = torch.sqrt(x**2 + y**2)
    shapes = [
        r < 1,  # disk
        (x.abs() < 0.8) & (y.abs() < 0.8),  # square
        (y.abs() < 0.3) & (x.abs() < 1.2),  # horizontal bar
        (x.abs() < 0.3) & (y.abs() < 1.2),  # vertical bar
        (r < 1) & (r > 0.55),  # ring
        ((x.abs() < 0.25) | (y.abs() < 0.25)) & (r < 1.2),  # cross
        (y > -0.8) & (y < 0.8) & (x.abs() < (y + 0.8) / 2),  # triangle
        ((x - y).abs() < 0.35) & (r < 1.2),  # diagonal
        (torch.floor(x * 1.5 + 8) + torch.floor(y * 1.5 + 8)) % 2 == 0,  # checker
        (torch.sqrt((x - 0.5) ** 2 + y**2) < 0.45) | (torch.sqrt((x + 0.5) ** 2 + y**2) < 0.45),  # two blobs
    ]
    mask = torch.stack(shapes, dim=1)[torch.arange(n), labels].float()  # [n, res, res]
    img = mask * level[:, None, None]
    if c == 3:
        hue = labels.float() / 10 * 2 * math.pi
        color = torch.stack([torch.cos(hue + k * 2 * math.pi / 3) * 0.35 + 0.65 for k in range(3)], dim=1)
        img = img[:, None] * color[:, :, None, None]
    elif c == 1:
        img = img[:, None]
    else:
        raise ValueError(f"channels must be 1 or 3, got {c}")
    images = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return TensorImageDataset(
        "synthetic", images, labels, 10, ["disk", "square", "hbar", "vbar", "ring", "cross", "triangle", "diagonal",
                                          "checker", "blobs"],
    )  # fmt: skip


# ---------------------------------------------------------------- entry point


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


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
    _check_split(split)
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


# ---------------------------------------------------------------- mini-batch stream


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


__all__ = [
    "BatchStream",
    "DatasetError",
    "FolderDataset",
    "ImageDataset",
    "TensorImageDataset",
    "image_to_uint8",
    "open_cifar10",
    "open_dataset",
    "open_fmnist",
    "open_idx",
    "open_synthetic",
    "read_idx",
    "safe_unpickle",
]
