"""make_pairs: teacher Heun outputs from seeded noise, chunked, resumable, read back by index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, load_model
from training.make_pairs import main
from training.pairs import META_NAME, PairsReader, chunk_path, make_pairs
from training.sampling import sample, seeded_noise


def test_pairs_are_teacher_samples(tiny_denoiser_dir: Path, tmp_path: Path):
    out = tmp_path / "pairs"
    res = main(["--teacher", str(tiny_denoiser_dir), "--num", "5", "--out", str(out), "--nfe", "3", "--chunk", "2"])
    assert res["complete"] and res["chunks"] == 3
    meta = json.loads((out / META_NAME).read_text())
    assert meta["nfe"] == 3 and meta["img_shape"] == [1, 16, 16] and meta["label_dim"] == 10
    reader = PairsReader(out)
    assert len(reader) == 5 and reader.seeds.tolist() == [0, 1, 2, 3, 4]
    z, labels, targets = reader.get([4, 1])
    assert torch.equal(z, seeded_noise([4, 1], (1, 16, 16)))
    assert labels.tolist() == [4, 1]
    teacher = load_model(tiny_denoiser_dir)
    assert torch.allclose(targets, sample(teacher, z, labels, nfe=3), rtol=1e-4, atol=1e-3)  # batch-split rounding


def test_resume_continues_and_keeps_finished_chunks(tiny_denoiser_dir: Path, tmp_path: Path):
    out = tmp_path / "pairs"
    kw = dict(nfe=1, chunk=2, seed_start=10, log=lambda msg: None)
    first = make_pairs(tiny_denoiser_dir, 5, out, max_chunks=1, **kw)  # "interrupted" after one chunk
    assert not first["complete"] and first["made"] == 1
    with pytest.raises(CheckpointError, match="pairs-00001"):
        PairsReader(out)
    (out / "pairs-00001.safetensors.tmp").write_bytes(b"partial write")  # leftovers of a killed run are ignored
    stamp = chunk_path(out, 0).stat().st_mtime_ns
    second = make_pairs(tiny_denoiser_dir, 5, out, **kw)
    assert second["complete"] and second["made"] == 2
    assert chunk_path(out, 0).stat().st_mtime_ns == stamp
    fresh = make_pairs(tiny_denoiser_dir, 5, tmp_path / "fresh", **kw)
    assert fresh["made"] == 3
    a, b = PairsReader(out), PairsReader(tmp_path / "fresh")
    assert torch.equal(a.images, b.images) and a.seeds.tolist() == list(range(10, 15))
    with pytest.raises(ValueError, match="nfe"):
        make_pairs(tiny_denoiser_dir, 5, out, nfe=3, chunk=2, seed_start=10, log=lambda msg: None)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these nets are tiny, and two spinning OpenMP threads on a busy CI box cost far more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
