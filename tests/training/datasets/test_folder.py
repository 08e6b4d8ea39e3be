"""Image folders and zips: classes, modes, crops, EDM labels and errors that name the file."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.datasets.helpers import make_images, zip_dir
from training.datasets.base import DatasetError
from training.datasets.folder import FolderDataset
from training.datasets.spec import open_dataset


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
