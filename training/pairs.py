"""(noise, teacher output) pairs for the distillation baseline: made by ``python -m training.make_pairs``, read here.

Pair i uses seed ``seed_start + i``: its noise is ``seeded_noise([seed])`` (so it is never stored), its class is
``seed % label_dim``, and its target is the teacher's deterministic sampler output from that noise (Heun, NFE 35
by default: 35 network calls per pair, which is why this runs once, apart from the fine-tune).

The output dir holds ``pairs.json`` (teacher, sampler, count, chunk size, image shape) and chunk files
``pairs-NNNNN.safetensors`` (``seeds`` int64, ``labels`` int64, ``images`` float32 [n, C, H, W]), each written
atomically. Rerunning the same command continues where it stopped: complete chunks are kept, missing ones made.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from training.checkpoint import CheckpointError
from training.sampling import sample, seeded_noise
from training.teacher import load_teacher

PAIRS_FORMAT = 1
META_NAME = "pairs.json"
# Keys of pairs.json that must agree for a rerun to continue an existing dir.
_FIXED = ("format", "teacher_fingerprint", "nfe", "solver", "num", "chunk", "seed_start", "img_shape", "label_dim")


def chunk_path(out: Path, index: int) -> Path:
    return out / f"pairs-{index:05d}.safetensors"


def pair_labels(seeds: torch.Tensor, label_dim: int) -> torch.Tensor:
    return seeds % label_dim if label_dim else torch.zeros_like(seeds)


def _chunk_ok(path: Path, expected: int) -> bool:
    if not path.is_file():
        return False
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return False
    return all(k in data and data[k].shape[0] == expected for k in ("seeds", "labels", "images"))


def make_pairs(
    teacher: str | Path,
    num: int,
    out: str | Path,
    *,
    nfe: int = 35,
    solver: str = "heun",
    chunk: int = 1000,
    batch: int = 64,
    seed_start: int = 0,
    device: str | torch.device = "cpu",
    max_chunks: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make (or complete) a pairs dir; ``max_chunks`` stops after computing that many new chunks."""
    if num < 1 or chunk < 1 or batch < 1:
        raise ValueError("num, chunk and batch must be >= 1")
    out = Path(out)
    t = load_teacher(teacher, device=device)
    net = t.net
    meta: dict[str, Any] = dict(
        format=PAIRS_FORMAT,
        teacher=str(teacher),
        teacher_fingerprint=t.info["fingerprint"],
        teacher_info=t.info,
        nfe=nfe,
        solver=solver,
        num=num,
        chunk=chunk,
        seed_start=seed_start,
        img_shape=[net.img_channels, net.img_resolution, net.img_resolution],
        label_dim=net.label_dim,
        class_names=t.class_names,
        label_rule="seed % label_dim",
    )
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_NAME
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = [k for k in _FIXED if old.get(k) != meta[k]]
        if diff:
            raise ValueError(
                f"{meta_path}: this dir was made with other settings ({', '.join(diff)} differ); "
                "use a new --out or the original options"
            )
    else:
        tmp = meta_path.with_name(META_NAME + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, meta_path)

    n_chunks = math.ceil(num / chunk)
    made = 0
    start_time = time.time()
    for ci in range(n_chunks):
        lo, hi = ci * chunk, min((ci + 1) * chunk, num)
        path = chunk_path(out, ci)
        if _chunk_ok(path, hi - lo):
            continue
        if max_chunks is not None and made >= max_chunks:
            break
        seeds = torch.arange(seed_start + lo, seed_start + hi, dtype=torch.int64)
        labels = pair_labels(seeds, net.label_dim)
        images = []
        for b in range(0, hi - lo, batch):
            s = seeds[b : b + batch]
            z = seeded_noise(s.tolist(), meta["img_shape"], device=device)
            y = labels[b : b + batch].to(device) if net.label_dim else None
            images.append(sample(net, z, y, nfe=nfe, solver=solver).cpu())
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {"seeds": seeds, "labels": labels, "images": torch.cat(images).contiguous()},
            str(tmp),
            metadata={"format": "pt"},
        )
        os.replace(tmp, path)
        made += 1
        rate = (hi - lo) * made / max(time.time() - start_time, 1e-9)
        log(f"chunk {ci + 1}/{n_chunks}: pairs {lo}..{hi - 1} ({rate:.1f} pairs/s)")
    complete = all(_chunk_ok(chunk_path(out, ci), min((ci + 1) * chunk, num) - ci * chunk) for ci in range(n_chunks))
    log(f"{out}: {'complete' if complete else 'incomplete (rerun to continue)'}, {num} pairs in {n_chunks} chunks")
    return {"out": str(out), "chunks": n_chunks, "made": made, "complete": complete}


class PairsReader:
    """Read a complete pairs dir by pair index: ``get([i, ...]) -> (noise, labels, targets)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found (make one with python -m training.make_pairs)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != PAIRS_FORMAT:
            raise CheckpointError(f"{meta_path}: format {self.meta.get('format')!r} is not {PAIRS_FORMAT}")
        self.num = int(self.meta["num"])
        self.chunk = int(self.meta["chunk"])
        self.img_shape = tuple(self.meta["img_shape"])
        self.label_dim = int(self.meta["label_dim"])
        seeds, labels, images = [], [], []
        for ci in range(math.ceil(self.num / self.chunk)):
            path = chunk_path(self.path, ci)
            expected = min((ci + 1) * self.chunk, self.num) - ci * self.chunk
            if not _chunk_ok(path, expected):
                raise CheckpointError(f"{path}: missing or incomplete; rerun make_pairs with the same options")
            data = load_file(str(path))
            seeds.append(data["seeds"])
            labels.append(data["labels"])
            images.append(data["images"])
        self.seeds = torch.cat(seeds)
        self.labels = torch.cat(labels)
        self.images = torch.cat(images)

    def __len__(self) -> int:
        return self.num

    def get(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        z = seeded_noise(self.seeds[idx].tolist(), self.img_shape)
        return z, self.labels[idx], self.images[idx]
