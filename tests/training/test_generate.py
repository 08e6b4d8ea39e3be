"""Images without a server: ``training.generation`` (seeds, classes, the pipeline, the files) and the
``python -m training.generate`` command line, checked against the service's own images."""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_CLASSES, make_tiny_generator_dir
from training.checkpoint import save_model
from training.generate import main
from training.generation import (
    OneStepPipeline,
    image_path,
    load_for_generation,
    parse_seeds,
    resolve_labels,
)
from training.sampling import class_from_seed, sample, seeded_noise


def test_parse_seeds():
    assert parse_seeds("0-3,10,7-8") == [0, 1, 2, 3, 10, 7, 8]
    assert parse_seeds(" 5 , 5 ") == [5, 5]
    assert len(parse_seeds("0-63,100-109")) == 74
    for bad in ("", "a", "3-1", "-1", "1-x", ",", f"0-{1 << 63}"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_resolve_labels_as_the_service_does():
    assert resolve_labels([1, 2, 3], 0) is None
    assert resolve_labels([1, 2, 3], 10, 4) == [4, 4, 4]
    assert resolve_labels([1, 2], 10, [9, 0]) == [9, 0]
    assert resolve_labels([5, 6], 10) == [class_from_seed(5, 10), class_from_seed(6, 10)]
    for args in (([1], 0, 3), ([1, 2], 10, [1]), ([1], 10, 10), ([1], 10, -1)):
        with pytest.raises(ValueError):
            resolve_labels(*args)


def test_class_from_seed_is_the_services():
    service_generate = pytest.importorskip("service.routes.generate")
    rng = random.Random(0)
    seeds = [0, 1, 7, (1 << 63) - 1, *(rng.randrange(1 << 63) for _ in range(2000))]
    for k in (1, 3, 10, 1000):
        assert [class_from_seed(s, k) for s in seeds] == [service_generate.class_from_seed(s, k) for s in seeds]
    classes = [class_from_seed(s, 10) for s in range(2000)]
    assert set(classes) == set(range(10)) and max(classes.count(c) for c in range(10)) < 260  # spread evenly


def test_pipeline_outputs_and_batch_independence(tiny_generator_dir):
    pipe = OneStepPipeline.from_pretrained(tiny_generator_dir, device="cpu")
    assert pipe.one_step and pipe.nfe == 1 and pipe.label_dim == 10 and pipe.class_names == TINY_CLASSES
    images = pipe(seeds=[0, 1, 2, 3], class_labels=[3, 7, 3, 7])
    assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8 and images.std() > 5
    one_by_one = np.concatenate([pipe([s], class_labels=c) for s, c in zip([0, 1, 2, 3], [3, 7, 3, 7], strict=True)])
    assert np.array_equal(images, one_by_one)  # an image depends on its seed and class only
    assert np.array_equal(pipe([0, 1, 2, 3], [3, 7, 3, 7], batch_size=3), images)
    pils = pipe(seeds=[0, 1], class_labels=[3, 7], output_type="pil")
    assert [p.mode for p in pils] == ["L", "L"] and np.array_equal(np.asarray(pils[1]), images[1, ..., 0])
    floats = pipe(seeds=[0], class_labels=3, output_type="pt")
    assert floats.shape == (1, 1, 16, 16) and floats.dtype == torch.float32
    assert not np.array_equal(pipe([0], class_labels=4), images[:1])  # the class matters
    with pytest.raises(ValueError):
        pipe([0], output_type="jpeg")
    with pytest.raises(ValueError):
        OneStepPipeline.from_pretrained(tiny_generator_dir, device="cpu", nfe=3)


def test_teacher_pipeline_samples_with_heun(tiny_denoiser_dir):
    pipe = OneStepPipeline.from_pretrained(tiny_denoiser_dir, device="cpu", nfe=3)
    assert not pipe.one_step and pipe.nfe == 3 and "Heun sampler at 3" in pipe.describe()
    got = pipe([4, 5], class_labels=2, output_type="pt")
    expected = sample(pipe.model, seeded_noise([4, 5], (1, 16, 16)), torch.tensor([2, 2]), nfe=3)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="odd"):
        OneStepPipeline.from_pretrained(tiny_denoiser_dir, device="cpu", nfe=4)
    euler = OneStepPipeline.from_pretrained(tiny_denoiser_dir, device="cpu", nfe=4, solver="euler")
    assert euler([4], class_labels=2).shape == (1, 16, 16, 1)


def test_run_dirs_give_their_latest_snapshot(tmp_path):
    run = tmp_path / "00003-tiny-d2o-f"
    make_tiny_generator_dir(run / "network-snapshot-000002", seed=1)
    make_tiny_generator_dir(run / "network-snapshot-000010", seed=2)
    (run / "config.json").write_text(json.dumps({"teacher": "x"}))  # a fine-tune run's config, not a model's
    model, config, model_dir = load_for_generation(run)
    assert model_dir.name == "network-snapshot-000010" and config.kind == "generator"
    with pytest.raises(FileNotFoundError):
        load_for_generation(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_for_generation(tmp_path / "empty")


def test_cli_writes_pngs_npz_and_grid(tiny_generator_dir, tmp_path, capsys):
    out, npz, grid = tmp_path / "out", tmp_path / "set.npz", tmp_path / "grid.png"
    rc = main(
        [str(tiny_generator_dir), "--seeds", "998-1001,5", "--batch", "3", "--outdir", str(out), "--subdirs",
         "--npz", str(npz), "--grid", str(grid), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 5 and summary["npz"] == str(npz)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["000000/000005.png", "000000/000998.png", "000000/000999.png", "001000/001000.png",
                     "001000/001001.png"]  # fmt: skip
    with np.load(npz) as f:
        images, seeds, labels, class_names = f["images"], f["seeds"], f["labels"], f["class_names"]
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.uint8
    assert seeds.tolist() == [998, 999, 1000, 1001, 5]
    assert labels.tolist() == [class_from_seed(s, 10) for s in seeds.tolist()]
    assert class_names.tolist() == TINY_CLASSES
    for i, s in enumerate(seeds.tolist()):
        assert np.array_equal(np.asarray(Image.open(image_path(out, s, subdirs=True))), images[i, ..., 0])
    assert Image.open(grid).size == (16 * 3, 16 * 2)
    pipe = OneStepPipeline.from_pretrained(tiny_generator_dir, device="cpu")
    assert np.array_equal(pipe(seeds.tolist()), images)

    # --class fixes the class; without a subfolder option the PNGs sit in --outdir.
    assert main([str(tiny_generator_dir), "--seeds", "7", "--class", "4", "--outdir", str(tmp_path / "flat"),
                 "--no-progress"]) == 0  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "flat" / "000007.png")), pipe([7], 4)[0, ..., 0])


def test_cli_teacher_unconditional_and_errors(tiny_denoiser_dir, tmp_path, capsys):
    npz = tmp_path / "t.npz"
    assert main([str(tiny_denoiser_dir), "--seeds", "1-2", "--nfe", "3", "--class", "2", "--npz", str(npz),
                 "--no-progress"]) == 0  # fmt: skip
    pipe = OneStepPipeline.from_pretrained(tiny_denoiser_dir, device="cpu", nfe=3)
    with np.load(npz) as f:
        assert np.array_equal(f["images"], pipe([1, 2], 2)) and f["labels"].tolist() == [2, 2]
    uncond = make_tiny_generator_dir(tmp_path / "uncond", label_dim=0)
    assert main([str(uncond), "--seeds", "3", "--npz", str(tmp_path / "u.npz"), "--no-progress"]) == 0
    with np.load(tmp_path / "u.npz") as f:
        assert f["labels"].tolist() == [-1] and f["class_names"].tolist() == []
    capsys.readouterr()
    assert main([str(uncond), "--seeds", "3", "--class", "1", "--grid", str(tmp_path / "g.png")]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert main([str(tiny_denoiser_dir), "--seeds", "1", "--nfe", "2", "--grid", str(tmp_path / "g.png")]) == 2
    assert "odd" in capsys.readouterr().err
    assert main([str(tmp_path / "nope"), "--seeds", "1", "--grid", str(tmp_path / "g.png")]) == 2
    for bad in (["--seeds", "5-1", "--grid", "g.png"], ["--seeds", "1"], ["--seeds", "1", "--subdirs", "--npz", "x"]):
        with pytest.raises(SystemExit):
            main([str(uncond), *bad])


def test_runs_as_a_module(tiny_generator_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.generate", str(tiny_generator_dir), "--seeds", "0-1", "--grid",
         str(tmp_path / "g.png"), "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["images"] == 2 and (tmp_path / "g.png").is_file()
    assert "one-step generator" in out.stderr


def test_same_pixels_as_the_service(tmp_path):
    """A seed (and class) gives the same pixels from POST /v1/generate as from training.generate."""
    pytest.importorskip("uvicorn")
    from tests.service.conftest import CLASS_NAMES, LiveServer, default_settings, make_generator

    models = tmp_path / "models"
    save_model(make_generator(16, 1, 10), models / "tiny", class_names=CLASS_NAMES)
    save_model(make_generator(8, 3, 0, seed=1), models / "tiny-rgb")
    server = LiveServer(default_settings(models, default_model="tiny")).start(timeout=240)  # torch backend
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def served(model: str, num_images: int, seed: int, class_labels) -> tuple[list[np.ndarray], list]:
                body = {"model": model, "num_images": num_images, "seed": seed, "class_labels": class_labels}
                r = client.post("/v1/generate", json=body)
                assert r.status_code == 200, r.text
                images = r.json()["images"]
                assert [img["seed"] for img in images] == list(range(seed, seed + num_images))
                pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(img["data"])))) for img in images]
                return pixels, [img["class_label"] for img in images]

            # The command line: classes drawn from the seeds (conditional and unconditional), or one --class.
            for model, n, seed, cls in (("tiny", 4, 40, None), ("tiny", 3, 7, 5), ("tiny-rgb", 2, 123, None)):
                theirs, their_labels = served(model, n, seed, cls)
                npz = tmp_path / f"{model}-{seed}.npz"
                args = [str(models / model), "--seeds", f"{seed}-{seed + n - 1}", "--npz", str(npz), "--no-progress"]
                assert main(args + (["--class", str(cls)] if cls is not None else [])) == 0
                with np.load(npz) as f:
                    ours, labels = f["images"], f["labels"].tolist()
                assert their_labels == [None if c == -1 else c for c in labels]
                for a, b in zip(theirs, ours, strict=True):
                    assert np.array_equal(a.reshape(b.shape), b), (model, seed)

            # The Python API: one class per image.
            theirs, _ = served("tiny", 3, 70, [9, 0, 5])
            ours = OneStepPipeline.from_pretrained(models / "tiny", device="cpu")([70, 71, 72], class_labels=[9, 0, 5])
            assert all(np.array_equal(a, b[..., 0]) for a, b in zip(theirs, ours, strict=True))
    finally:
        server.stop()
