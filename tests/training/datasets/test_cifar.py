"""CIFAR-10 python batches: directory and tarball, and pickles that must be refused."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.datasets.base import DatasetError
from training.datasets.spec import open_dataset


def cifar_batch(n: int, offset: int, protocol: int) -> bytes:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[:, 0], data[:, 1024], data[:, 2048] = 10, 20, 30  # first pixel's R, G, B planes
    batch = {
        b"batch_label": b"training batch",
        b"labels": [(offset + i) % 10 for i in range(n)],
        b"data": data,
        b"filenames": [f"img{offset + i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol)


@pytest.fixture(params=[2, 5], ids=["protocol2", "protocol5"])
def cifar_dir(tmp_path: Path, request) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for k in range(1, 6):
        (root / f"data_batch_{k}").write_bytes(cifar_batch(3, 3 * k, request.param))
    (root / "test_batch").write_bytes(cifar_batch(4, 100, request.param))
    names = [n.encode() for n in ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]]
    meta = {b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": 3}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=request.param))
    return root


def test_cifar10_batches(cifar_dir: Path) -> None:
    train = open_dataset(f"cifar10:{cifar_dir.parent}")  # the parent of cifar-10-batches-py works too
    test = open_dataset(f"cifar10:{cifar_dir}", split="test")
    assert (len(train), len(test)) == (15, 4)
    assert train.class_names[1] == "car" and train.num_classes == 10 and train.channels == 3
    assert train.labels.tolist() == [(3 + i) % 10 for i in range(15)]
    x, _ = train[0]
    assert x.shape == (3, 32, 32)
    assert x[:, 0, 0].tolist() == pytest.approx([v / 127.5 - 1 for v in (10, 20, 30)])
    assert open_dataset(f"cifar10:{cifar_dir}", resolution=16)[0][0].shape == (3, 16, 16)
    gray = open_dataset(f"cifar10:{cifar_dir}", channels=1)
    assert gray.channels == 1 and gray.images[0, 0, 0, 0] == round(10 * 0.299 + 20 * 0.587 + 30 * 0.114)


def test_cifar10_tarball(cifar_dir: Path, tmp_path: Path) -> None:
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-10-batches-py")
    ds, ref = open_dataset(f"cifar10:{tgz}", split="test"), open_dataset(f"cifar10:{cifar_dir}", split="test")
    assert torch.equal(ds.get_batch(range(4))[0], ref.get_batch(range(4))[0])


class _Evil:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval, print], ids=["os.system", "eval", "print"])
def test_cifar10_malicious_pickle_refused(cifar_dir: Path, tmp_path: Path, func) -> None:
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    evil = cifar_dir / "data_batch_2"
    evil.write_bytes(pickle.dumps({b"data": _Evil(func, payload), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global") as e:
        open_dataset(f"cifar10:{cifar_dir}")
    assert str(evil) in str(e.value) and func.__name__ in str(e.value)
    assert not marker.exists()


def test_cifar10_wrong_content(cifar_dir: Path) -> None:
    (cifar_dir / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="3072"):
        open_dataset(f"cifar10:{cifar_dir}", split="test")
    (cifar_dir / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="test_batch"):
        open_dataset(f"cifar10:{cifar_dir}", split="test")
    (cifar_dir / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4.*not found"):
        open_dataset(f"cifar10:{cifar_dir}")
