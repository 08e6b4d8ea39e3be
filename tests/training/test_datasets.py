"""Data readers on files the tests write themselves (good and corrupt), and the resumable batch stream."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets import (
    FMNIST_CLASSES,
    FMNIST_DIR,
    BatchStream,
    DatasetError,
    FolderDataset,
    open_dataset,
    open_synthetic,
    read_idx,
)

# ---------------------------------------------------------------- IDX


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


# ---------------------------------------------------------------- CIFAR-10


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


# ---------------------------------------------------------------- image folders and zips


def make_images(root: Path) -> dict[str, Image.Image]:
    """Two classes, mixed sizes and modes; returns relative path -> image."""
    pal = Image.new("P", (30, 50))
    pal.putpalette([0, 0, 255] * 256)
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 0))  # fully transparent: composited on white
    rgba.paste((255, 0, 0, 255), (0, 0, 24, 12))
    images = {
        "dog/a.png": Image.new("RGB", (40, 20), (255, 0, 0)),
        "dog/nested/b.jpg": Image.new("L", (64, 64), 128),
        "cat/c.png": rgba,
        "cat/d.gif": pal,
        "cat/e.bmp": Image.new("RGB", (16, 16), (0, 255, 0)),
    }
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
    (root / "cat" / "notes.txt").write_text("not an image")
    return images


def zip_dir(src: Path, dst: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(src).as_posix())
    return dst


def test_folder_classes_modes_and_crop(tmp_path: Path) -> None:
    make_images(tmp_path / "pets")
    ds = open_dataset(str(tmp_path / "pets"), resolution=8)
    assert isinstance(ds, FolderDataset) and ds.name == "pets"
    assert len(ds) == 5 and ds.channels == 3 and ds.resolution == 8
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.files == ["cat/c.png", "cat/d.gif", "cat/e.bmp", "dog/a.png", "dog/nested/b.jpg"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    x, y = ds.get_batch(range(5))
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and y.tolist() == [0, 0, 0, 1, 1]
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    red, white, blue = torch.tensor([1.0, -1, -1]), torch.tensor([1.0, 1, 1]), torch.tensor([-1.0, -1, 1])
    assert torch.equal(x[0, :, 0, 0], red)  # RGBA: opaque top half red
    assert torch.equal(x[0, :, 7, 0], white)  # transparent bottom half on white
    assert torch.equal(x[1, :, 4, 4], blue)  # palette image
    assert torch.allclose(x[3].mean((1, 2)), red, atol=0.02, rtol=0)  # 40x20 red: resized + cropped
    assert abs(float(x[4].mean()) - (128 / 127.5 - 1)) < 0.02  # gray JPEG replicated to RGB
    (tmp_path / "pets" / "dog" / "nested" / "loop").symlink_to(tmp_path / "pets" / "dog")
    assert len(open_dataset(str(tmp_path / "pets"), resolution=8)) == 5  # a symlink loop is not followed forever
    native = open_dataset(str(tmp_path / "pets"))
    assert native.resolution == 24  # no resolution given: the first image's shorter side


def test_folder_grayscale_inferred_and_unconditional(tmp_path: Path) -> None:
    root = tmp_path / "gray" / "images"  # one wrapping folder: no classes
    root.mkdir(parents=True)
    for k in range(3):
        Image.new("L", (10 + k, 12), 40 * k).save(root / f"{k}.png")
    Image.new("LA", (10, 10), (200, 255)).save(root / "3.png")
    ds = open_dataset(str(tmp_path / "gray"), resolution=10)
    assert ds.channels == 1 and ds.num_classes == 0 and ds.class_names == []
    x, y = ds.get_batch([0, 3])
    assert x.shape == (2, 1, 10, 10) and y.tolist() == [0, 0]
    assert open_dataset(str(tmp_path / "gray"), resolution=10, channels=3).channels == 3


def test_zip_matches_folder(tmp_path: Path) -> None:
    make_images(tmp_path / "pets")
    ref = open_dataset(str(tmp_path / "pets"), resolution=8)
    for prefix in ("", "pets/"):  # a zip of the folder itself or of its contents
        z = zip_dir(tmp_path / "pets", tmp_path / f"pets{len(prefix)}.zip", prefix)
        ds = open_dataset(str(z), resolution=8)
        assert ds.class_names == ref.class_names and ds.labels.tolist() == ref.labels.tolist()
        assert torch.equal(ds.get_batch(range(5))[0], ref.get_batch(range(5))[0])
        clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy that reopens the zip
        assert torch.equal(clone[2][0], ref[2][0])


def test_edm_dataset_json_labels(tmp_path: Path) -> None:
    root = tmp_path / "edm"
    (root / "00000").mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (8, 8), (k * 60, 0, 0)).save(root / "00000" / f"img{k:08d}.png")
    labels = [[f"00000/img{k:08d}.png", [3, 1, 0, 3][k]] for k in range(4)]
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    ds = open_dataset(str(zip_dir(root, tmp_path / "edm.zip")))
    assert ds.labels.tolist() == [3, 1, 0, 3] and ds.num_classes == 4 and ds.resolution == 8
    (root / "dataset.json").write_text(json.dumps({"labels": labels[:3]}))
    with pytest.raises(DatasetError, match="no label for 00000/img00000003.png"):
        open_dataset(str(root))


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    make_images(tmp_path / "pets")
    bad = tmp_path / "pets" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(DatasetError) as e:
        open_dataset(str(tmp_path / "pets"))
    assert str(bad) in str(e.value)
    z = zip_dir(tmp_path / "pets", tmp_path / "pets.zip")
    with pytest.raises(DatasetError, match="dog/broken.png") as e:
        open_dataset(str(z))
    assert str(z) in str(e.value)
    # a header that reads but pixel data that does not: caught when the image is decoded
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    bad.write_bytes(_png(Image.fromarray(noise))[:-600])
    ds = open_dataset(str(tmp_path / "pets"), resolution=8)
    with pytest.raises(DatasetError, match="broken.png"):
        ds.get_batch(range(len(ds)))
    bad.unlink()
    Image.new("L", (8, 8)).save(tmp_path / "pets" / "loose.png")
    with pytest.raises(DatasetError, match="loose.png"):
        open_dataset(str(tmp_path / "pets"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt"):
        open_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(str(tmp_path / "missing"))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_classes() -> None:
    a, b = open_synthetic(40), open_dataset("synthetic:40")
    assert torch.equal(a.images, b.images) and a.resolution == 16 and a.channels == 1 and a.num_classes == 10
    assert a.labels.tolist() == [i % 10 for i in range(40)]
    assert not torch.equal(open_dataset("synthetic:40", split="test").images, a.images)
    means = [float(a.images[a.labels == k].float().mean()) for k in range(10)]
    assert len({round(m) for m in means}) > 5  # the classes look different
    rgb = open_dataset("synthetic:10", resolution=32, channels=3)
    assert rgb[3][0].shape == (3, 32, 32)
    with pytest.raises(DatasetError, match="synthetic"):
        open_dataset("synthetic:lots")
    with pytest.raises(DatasetError, match="not a known data set"):
        open_dataset("imagenet")


# ---------------------------------------------------------------- BatchStream


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
