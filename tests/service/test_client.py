"""service.client against a real uvicorn server (tests/service/conftest.py) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import AsyncOnestepClient, OnestepClient, OnestepError
from tests.service.conftest import CLASS_NAMES, COND, UNCOND, LiveServer

ROOT = Path(__file__).resolve().parents[2]


def test_generate_decodes_images_and_timing(server: LiveServer) -> None:
    with OnestepClient(server.url) as client:
        result = client.generate_full(num_images=3, class_labels=3, seed=7)
    assert result.model == COND
    assert [img.seed for img in result.images] == [7, 8, 9]
    assert all(img.class_label == 3 and img.class_name == CLASS_NAMES[3] for img in result.images)
    for img in result.images:
        assert img.media_type == "image/png"
        pil = Image.open(io.BytesIO(img.data))
        assert pil.format == "PNG" and pil.size == (16, 16)
    t = result.timing
    assert 1 <= t.batch_size <= 8
    assert t.inference_ms > 0 and t.queue_ms >= 0 and t.encode_ms >= 0 and t.total_ms >= t.inference_ms


def test_same_seed_same_bytes_and_formats(server: LiveServer) -> None:
    with OnestepClient(server.url) as client:
        a = client.generate(class_labels=[1, 2], num_images=2, seed=11)
        b = client.generate(class_labels=[1, 2], num_images=2, seed=11)
        assert [i.data for i in a] == [i.data for i in b]
        jpeg = client.generate(seed=1, format="jpeg", quality=80)[0]
        assert jpeg.media_type == "image/jpeg" and jpeg.data[:2] == b"\xff\xd8"
        raw = client.generate_raw(class_label=1, seed=11)
        assert raw == a[0].data


def test_raw_pixels_as_json_and_as_octet_stream(server: LiveServer) -> None:
    """format raw (base64 pixels with shape and dtype in JSON) and Accept: application/octet-stream (one array):
    the same pixels as the lossless PNG of the same seeds and classes."""
    with OnestepClient(server.url) as client:
        png = client.generate(num_images=3, class_labels=[1, 2, 3], seed=21)
        raw = client.generate(num_images=3, class_labels=[1, 2, 3], seed=21, format="raw")
        batch = client.generate_array(num_images=3, class_labels=[1, 2, 3], seed=21)
        with pytest.raises(ValueError, match="generate_array"):
            client.generate_raw(seed=1, format="raw")
        rgb = client.generate_array(num_images=2, seed=5, model=UNCOND)
    for p, r in zip(png, raw, strict=True):
        assert r.media_type == "application/octet-stream" and r.shape == (16, 16, 1) and r.dtype == "uint8"
        assert len(r.data) == 16 * 16 and np.array_equal(r.array(), p.array())
    assert batch.pixels.shape == (3, 16, 16, 1) and batch.pixels.dtype == np.uint8
    assert batch.seeds == [21, 22, 23] and batch.class_labels == [1, 2, 3]
    assert np.array_equal(batch.pixels, np.stack([p.array() for p in png]))
    assert batch.timing.inference_ms > 0 and batch.timing.batch_size >= 1
    assert rgb.pixels.shape == (2, 8, 8, 3) and rgb.class_labels is None and rgb.seeds == [5, 6]

    async def go() -> np.ndarray:
        async with AsyncOnestepClient(server.url) as client:
            return (await client.generate_array(num_images=3, class_labels=[1, 2, 3], seed=21)).pixels

    assert np.array_equal(asyncio.run(go()), batch.pixels)


def test_models_ready_and_errors(server: LiveServer) -> None:
    with OnestepClient(server.url) as client:
        assert client.ready()
        models = {m["id"]: m for m in client.models()}
        assert set(models) == {COND, UNCOND}
        assert models[COND]["class_names"] == CLASS_NAMES
        with pytest.raises(OnestepError) as e:
            client.generate(model="nope")
        assert e.value.status == 404 and e.value.field == "model"
        with pytest.raises(OnestepError) as e:
            client.generate(class_labels=10)
        assert e.value.status == 422 and e.value.type == "validation_error" and e.value.field == "class_labels"
        assert "onestep_images_generated" in client.metrics()
    assert not OnestepClient("http://127.0.0.1:9", timeout=2).ready()


def test_async_client_concurrent(server: LiveServer) -> None:
    async def go() -> list:
        async with AsyncOnestepClient(server.url) as client:
            assert await client.ready()
            assert [m["id"] for m in await client.models()][0] == COND
            return await asyncio.gather(*(client.generate(seed=s, class_labels=0) for s in range(6)))

    results = asyncio.run(go())
    assert [r[0].seed for r in results] == list(range(6))
    with OnestepClient(server.url) as client:
        assert client.generate(seed=4, class_labels=0)[0].data == results[4][0].data


def test_cli_writes_png(server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.png"
    cmd = [sys.executable, "-m", "service.client", "--url", server.url, "generate", "--class", "3", "--seed", "7"]
    proc = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "seed 7" in proc.stdout and "class 3" in proc.stdout
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (16, 16)
    with OnestepClient(server.url) as client:
        assert out.read_bytes() == client.generate(class_labels=3, seed=7)[0].data

    many = subprocess.run(
        [*cmd, "-n", "2", "-o", str(tmp_path / "m.webp")], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert many.returncode == 0, many.stderr
    assert Image.open(tmp_path / "m-1.webp").format == "WEBP"

    npy = subprocess.run([*cmd, "-o", str(tmp_path / "px.npy")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert npy.returncode == 0, npy.stderr
    pixels = np.load(tmp_path / "px.npy", allow_pickle=False)
    assert pixels.shape == (16, 16, 1) and np.array_equal(pixels[:, :, 0], np.asarray(img))

    bad = subprocess.run(
        [*cmd[:-4], "--model", "nope", "-o", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "404" in bad.stderr and not (tmp_path / "x.png").exists()
