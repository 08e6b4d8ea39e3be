"""MNIST-format IDX readers and Fashion-MNIST, on files the tests write themselves (good and corrupt)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from training.datasets.base import DatasetError
from training.datasets.idx import FMNIST_CLASSES, FMNIST_DIR, read_idx
from training.datasets.spec import open_dataset


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def idx_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pair_reads_exact_pixels(tmp_path: Path, idx_arrays, gz: bool) -> None:
    images, labels = idx_arrays
    ext = ".gz" if gz else ""
    ip = write(tmp_path / f"img{ext}", idx_bytes(images), gz)
    lp = write(tmp_path / f"lbl{ext}", idx_bytes(labels), gz)
    ds = open_dataset(f"idx:{ip},{lp}")
    assert len(ds) == 7 and ds.channels == 1 and ds.resolution == 28
    assert ds.num_classes == 10 and ds.class_names[9] == "9"
    x, y = ds[6]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 9
    assert torch.equal(x[0], torch.from_numpy(images[6]).float() / 127.5 - 1)
    xb, yb = ds.get_batch([6, 0, 6])
    assert xb.shape == (3, 1, 28, 28) and yb.dtype == torch.int64 and yb.tolist() == [9, 0, 9]
    assert torch.equal(xb[0], x) and float(xb.min()) >= -1 and float(xb.max()) <= 1
    small = open_dataset(f"idx:{ip},{lp}", resolution=16)
    assert small[0][0].shape == (1, 16, 16)
    rgb = open_dataset(f"idx:{ip},{lp}", channels=3)
    assert rgb.channels == 3 and all(torch.equal(rgb[6][0][k], x[0]) for k in range(3))


@pytest.mark.parametrize(
    ("mangle", "complaint"),
    [
        (lambda b: b"\x08\x03" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "data type"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b + b"junk", "unexpected bytes"),
    ],
)
@pytest.mark.parametrize("gz", [True, False])
def test_idx_corrupt_file_named(tmp_path: Path, idx_arrays, mangle, complaint: str, gz: bool) -> None:
    bad = write(tmp_path / "bad-images.idx", mangle(idx_bytes(idx_arrays[0])), gz)
    lp = write(tmp_path / "labels.idx", idx_bytes(idx_arrays[1]))
    with pytest.raises(DatasetError, match=complaint) as e:
        open_dataset(f"idx:{bad},{lp}")
    assert str(bad) in str(e.value)


def test_idx_count_mismatch_and_bad_gzip(tmp_path: Path, idx_arrays) -> None:
    images, labels = idx_arrays
    ip = write(tmp_path / "img.gz", idx_bytes(images), gz=True)
    lp = write(tmp_path / "lbl.gz", idx_bytes(labels[:5]), gz=True)
    with pytest.raises(DatasetError, match="7 images.*5 labels") as e:
        open_dataset(f"idx:{ip},{lp}")
    assert str(ip) in str(e.value) and str(lp) in str(e.value)
    broken = write(tmp_path / "broken.gz", gzip.compress(idx_bytes(images))[:-40])
    with pytest.raises(DatasetError, match="gzip") as e:
        read_idx(broken)
    assert str(broken) in str(e.value)
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not Path(FMNIST_DIR, "train-images-idx3-ubyte.gz").is_file(), reason=f"Debian's Fashion-MNIST not at {FMNIST_DIR}"
)
def test_fmnist_real_files() -> None:
    train, test = open_dataset("fmnist"), open_dataset("fmnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_names == FMNIST_CLASSES and train.class_names[9] == "Ankle boot" and train.num_classes == 10
    x, y = train.get_batch(range(0, 60000, 97))
    assert x.shape[1:] == (1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_fmnist_missing_names_package_and_option(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        open_dataset("fmnist", path=str(tmp_path / "empty"))
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "--data-path" in msg and str(tmp_path / "empty") in msg


def test_fmnist_from_other_dir(tmp_path: Path, idx_arrays) -> None:
    images, labels = idx_arrays
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))  # an uncompressed copy is accepted too
    ds = open_dataset(f"fmnist:{tmp_path}", split="test")
    assert len(ds) == 7 and ds.class_names == FMNIST_CLASSES
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 2, 3, 4, 5, 10], np.uint8)))
    with pytest.raises(DatasetError, match="label 10 out of range"):
        open_dataset("fmnist", path=str(tmp_path), split="test")
