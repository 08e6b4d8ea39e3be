"""Image folders and ``.zip`` files of images of any size and mode, decoded lazily.

Class subfolders become labels (sorted names), an EDM ``dataset.json`` label list wins when present; images are
resized (shorter side) and center-cropped.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from training.datasets.base import DatasetError, ImageDataset, to_float
from training.datasets.convert import image_to_uint8

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


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
