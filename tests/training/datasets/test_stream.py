"""The resumable batch stream: determinism, epochs, x-flips, rank sharding and resuming."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tests.training.datasets.helpers import make_images
from training.datasets.folder import FolderDataset
from training.datasets.spec import open_dataset
from training.datasets.stream import BatchStream
from training.datasets.synthetic import open_synthetic


def take(stream: BatchStream, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(k)]


def test_stream_deterministic_and_epochs() -> None:
    ds = open_synthetic(30)
    a, b = take(BatchStream(ds, 8, seed=3), 8), take(BatchStream(ds, 8, seed=3), 8)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    c = take(BatchStream(ds, 8, seed=4), 1)
    assert not torch.equal(a[0][0], c[0][0])
    # every image exactly once per epoch, batches straddle epochs (30 is not a multiple of 8)
    stream = BatchStream(ds, 8, seed=3)
    seen = []
    for _ in range(15):  # 120 slots = 4 epochs
        seen.append(stream._slots(0, 8)[0])
        next(stream)
    slots = torch.cat(seen)
    for e in range(4):
        assert sorted(slots[30 * e : 30 * (e + 1)].tolist()) == list(range(30))
    assert not torch.equal(slots[:30], slots[30:60])
    assert stream.state_dict()["epoch"] == 4 and stream.state_dict()["position"] == 0


def test_stream_xflip_deterministic() -> None:
    ds = open_synthetic(16)
    plain = take(BatchStream(ds, 16, seed=1), 1)[0][0]
    flipped = take(BatchStream(ds, 16, seed=1, xflip=True), 1)[0][0]
    same = [torch.equal(p, f) for p, f in zip(plain, flipped, strict=True)]
    mirrored = [torch.equal(p.flip(-1), f) for p, f in zip(plain, flipped, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert not all(same)
    assert torch.equal(flipped, take(BatchStream(ds, 16, seed=1, xflip=True), 1)[0][0])


def test_stream_rank_sharding_covers_global_batch() -> None:
    ds = open_synthetic(25)
    single = take(BatchStream(ds, 10, seed=7, xflip=True), 6)
    ranks = [take(BatchStream(ds, 10, seed=7, rank=r, world_size=2, xflip=True), 6) for r in range(2)]
    for k, (x, y) in enumerate(single):
        assert ranks[0][k][0].shape[0] == 5
        assert torch.equal(torch.cat([ranks[0][k][0], ranks[1][k][0]]), x)
        assert torch.equal(torch.cat([ranks[0][k][1], ranks[1][k][1]]), y)
    with pytest.raises(ValueError, match="multiple of world_size"):
        BatchStream(ds, 9, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        BatchStream(ds, 8, rank=2, world_size=2)


def test_stream_resume_mid_epoch() -> None:
    ds = open_synthetic(50)
    full = take(BatchStream(ds, 12, seed=5, xflip=True), 9)
    first = BatchStream(ds, 12, seed=5, xflip=True)
    take(first, 3)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 36
    buf = io.BytesIO()
    torch.save(state, buf)  # the loop stores it inside its training state
    buf.seek(0)
    resumed = BatchStream(ds, 12, seed=5, xflip=True, rank=1, world_size=2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rest = take(resumed, 6)  # a different world size resumes the same global batches
    for (x, y), (xr, yr) in zip(full[3:], rest, strict=True):
        assert torch.equal(x[6:], xr) and torch.equal(y[6:], yr)
    with pytest.raises(ValueError, match="50 images"):
        BatchStream(open_synthetic(20), 12, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BatchStream(ds, 12, seed=6).load_state_dict(state)


def test_stream_over_folder(tmp_path: Path) -> None:
    make_images(tmp_path / "pets")
    ds = open_dataset(str(tmp_path / "pets"), resolution=8)
    x, y = next(BatchStream(ds, 4, seed=0))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64
    again = ds.get_batch(range(5))[0]  # now from the cache
    uncached = FolderDataset(tmp_path / "pets", resolution=8, cache_bytes=0, threads=1)
    assert torch.equal(again, uncached.get_batch(range(5))[0]) and not uncached._cache
