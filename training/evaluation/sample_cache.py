"""Sample sets of multi-step teachers kept on disk, so that an expensive set is generated once.

A teacher's 10,000 test-range samples at 35 NFE take hours of CPU; every later report that compares a one-step
model with that teacher needs exactly the same images. The cache keys a set on everything that decides its
pixels: the model dir's weights and config (SHA-256 of the files), the NFE, the noise seeds, the class labels,
the device type and the torch version. Sets are stored as float32 ``.npy`` (the generator's own output, before
clamping), written atomically once the whole set has been generated, with a JSON sidecar holding the key and the
seconds the generation took. One-step sets are not cached: they cost one forward pass per image. The cache keeps
at most 8 GiB: storing a set removes the sets used least recently beyond that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import file_sha256

DEFAULT_CACHE_DIR = "runs/sample-cache"
FORMAT_VERSION = 1
MAX_CACHED_BYTES = 1 << 30  # larger sets (e.g. 50,000 images of 64x64x3) are generated every time
MAX_CACHE_TOTAL_BYTES = 8 << 30  # past this, the sets used least recently are removed (a 10k FMNIST set: 31 MB)


def prune(root: Path, limit: int = MAX_CACHE_TOTAL_BYTES, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used sets (by their file's mtime, which a hit renews) until the cache holds at
    most ``limit`` bytes; ``keep`` (the set just stored) stays whatever its size. Returns the removed sets."""
    sets = []
    for path in root.glob("*.npy"):
        try:
            st = path.stat()
        except OSError:
            continue  # removed by another run meanwhile
        sets.append((st.st_mtime_ns, st.st_size, path))
    total = sum(size for _, size, _ in sets)
    removed = []
    for _, size, path in sorted(sets):
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        for file in (path, path.with_suffix(".json")):
            file.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the model dir's config.json and weight files (names and contents)."""
    h = hashlib.sha256()
    files = sorted(
        p for p in model_dir.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name == "config.json")
    )
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no config.json or .safetensors file")
    for path in files:
        h.update(path.name.encode())
        h.update(file_sha256(path).encode())
    return h.hexdigest()


def set_key(
    model_dir: Path, nfe: int, seeds: range, labels: torch.Tensor | None, device: str, fingerprint: str | None = None
) -> dict[str, Any]:
    """Everything that decides a denoiser set's pixels, as a JSON-able record. ``fingerprint``: the model dir's
    :func:`model_fingerprint`, where the caller already has it (one hash of the weights for every NFE)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": fingerprint or model_fingerprint(model_dir),
        "sampler": "heun",
        "nfe": nfe,
        "seeds": [seeds.start, seeds.stop, seeds.step],
        "labels": None if labels is None else hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest(),
        "device": torch.device(device).type,
        "torch": torch.__version__,
    }


class CachedSet:
    """``generate(start, stop)`` served from the cache when the set is there, else generated and stored.

    The evaluator asks for consecutive slices from 0 to ``count``; the set is written once the last one is made.
    """

    def __init__(self, root: Path, key: dict[str, Any], generate: Callable[[int, int], torch.Tensor], count: int):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.path = root / f"{digest}.npy"
        self.meta_path = root / f"{digest}.json"
        self.key, self.generate, self.count = key, generate, count
        self.seconds: float | None = None
        self.images: np.ndarray | None = self._load()
        self._parts: list[torch.Tensor] = []
        self._next = 0
        self._spent = 0.0

    @property
    def hit(self) -> bool:
        return self.images is not None

    def _load(self) -> np.ndarray | None:
        try:
            meta = json.loads(self.meta_path.read_text())
            images = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if meta.get("key") != self.key or len(images) != self.count or images.dtype != np.float32:
            return None
        self.seconds = float(meta.get("seconds", 0.0))
        with contextlib.suppress(OSError):
            os.utime(self.path)  # used now: the last set pruning removes
        return images

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if self.images is not None:
            return torch.from_numpy(np.array(self.images[start:stop]))
        t0 = time.perf_counter()
        images = self.generate(start, stop)
        self._spent += time.perf_counter() - t0
        per_image = images[0].numel() * 4 if len(images) else 0
        if start == self._next and per_image * self.count <= MAX_CACHED_BYTES:  # a set too large is not held
            self._parts.append(images.detach().to("cpu", torch.float32))
            self._next = stop
            if stop == self.count:
                self._store()
        else:
            self._parts, self._next = [], -1  # not a front-to-back pass: nothing is stored
        return images

    def _store(self) -> None:
        images = torch.cat(self._parts).numpy()
        self._parts = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, self.path)
        meta = {"key": self.key, "seconds": round(self._spent, 3), "shape": list(images.shape)}
        tmp_meta = self.meta_path.with_name(self.meta_path.name + f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp_meta, self.meta_path)
        self.seconds = self._spent
        prune(self.path.parent, keep=self.path)
