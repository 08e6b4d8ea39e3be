"""POST /v1/generate (and /generate) happy paths: JSON and raw images, formats, labels, seeds, splitting, playground."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from service.middleware import GENERATE_PATHS
from tests.service.conftest import CLASS_NAMES, COND, UNCOND, LiveServer
from tests.service.helpers import decode, decode_json_images, max_diff


@pytest.mark.parametrize("path", GENERATE_PATHS)
def test_json_response_shape(client: httpx.Client, path: str) -> None:
    r = client.post(path, json={"num_images": 3, "class_labels": 4, "seed": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == COND
    assert [img["seed"] for img in body["images"]] == [10, 11, 12]
    assert [img["class_label"] for img in body["images"]] == [4, 4, 4]
    assert {img["class_name"] for img in body["images"]} == {CLASS_NAMES[4]}
    for arr in decode_json_images(body):
        assert arr.shape == (16, 16) and arr.dtype == np.uint8
    timing = body["timing"]
    assert set(timing) == {"queue_ms", "inference_ms", "encode_ms", "total_ms", "batch_size"}
    assert timing["batch_size"] >= 1 and timing["total_ms"] >= timing["inference_ms"] > 0


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_formats_json_and_raw(client: httpx.Client, fmt: str, magic: bytes) -> None:
    r = client.post("/generate", json={"seed": 3, "class_labels": 1, "format": fmt, "quality": 70})
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert img["media_type"] == f"image/{fmt}"
    assert base64.b64decode(img["data"]).startswith(magic)
    raw = client.post(
        "/generate", json={"seed": 3, "class_labels": 1, "quality": 70}, headers={"Accept": f"image/{fmt}"}
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"] == f"image/{fmt}"
    assert raw.content.startswith(magic)
    assert raw.headers["x-seed"] == "3" and raw.headers["x-class-label"] == "1"
    assert "inference;dur=" in raw.headers["server-timing"]
    if fmt == "png":  # lossless: raw and JSON carry the same pixels
        assert np.array_equal(decode(raw.content), decode(base64.b64decode(img["data"])))


def test_raw_format_in_json_and_as_octet_stream(client: httpx.Client) -> None:
    payload = {"num_images": 2, "seed": 3, "class_labels": [1, 4]}
    png = decode_json_images(client.post("/generate", json=payload).json())
    r = client.post("/generate", json={**payload, "format": "raw"})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    for img, expected in zip(images, png, strict=True):
        assert img["media_type"] == "application/octet-stream" and img["shape"] == [16, 16, 1]
        assert img["dtype"] == "uint8" and "class_name" in img
        pixels = np.frombuffer(base64.b64decode(img["data"]), np.uint8).reshape(img["shape"])
        assert np.array_equal(pixels[:, :, 0], expected)
    for accept in ("application/octet-stream", "application/octet-stream, application/json;q=0.5"):
        for fmt in ("raw", "png"):  # the Accept header decides the body, as image/png does
            body = client.post("/generate", json={**payload, "format": fmt}, headers={"Accept": accept})
            assert body.status_code == 200, body.text
            assert body.headers["content-type"] == "application/octet-stream"
            assert body.headers["x-shape"] == "2,16,16,1" and body.headers["x-dtype"] == "uint8"
            assert body.headers["x-seed"] == "3" and body.headers["x-class-labels"] == "1,4"
            assert "inference;dur=" in body.headers["server-timing"] and int(body.headers["x-batch-size"]) >= 1
            assert np.array_equal(np.frombuffer(body.content, np.uint8).reshape(2, 16, 16), np.stack(png))
    rgb = client.post("/generate", json={"model": UNCOND, "seed": 1}, headers={"Accept": "application/octet-stream"})
    assert rgb.headers["x-shape"] == "1,8,8,3" and "x-class-labels" not in rgb.headers and len(rgb.content) == 192
    refused = client.post("/generate", json={**payload, "format": "raw"}, headers={"Accept": "image/*"})
    assert refused.status_code == 406 and refused.json()["error"]["field"] == "format"


def test_seeds_labels_and_random_choices(client: httpx.Client) -> None:
    a = client.post("/generate", json={"num_images": 2, "class_labels": [7, 2], "seed": 100}).json()
    assert [i["class_label"] for i in a["images"]] == [7, 2]
    # Image i uses seed + i: a lone request with seed 101 and class 2 gives the second image.
    b = client.post("/generate", json={"class_labels": 2, "seed": 101}).json()
    assert max_diff(decode_json_images(a)[1], decode_json_images(b)[0]) <= 1
    # Different classes change the image.
    c = client.post("/generate", json={"class_labels": 3, "seed": 101}).json()
    assert max_diff(decode_json_images(b)[0], decode_json_images(c)[0]) > 1
    # No seed: the server picks one and returns it; sending it back reproduces the image.
    d = client.post("/generate", json={"num_images": 2}).json()
    seeds = [i["seed"] for i in d["images"]]
    labels = [i["class_label"] for i in d["images"]]
    assert seeds[1] == seeds[0] + 1 and all(0 <= c < 10 for c in labels)
    e = client.post("/generate", json={"num_images": 2, "seed": seeds[0]}).json()
    assert [i["class_label"] for i in e["images"]] == labels  # random classes are drawn from the seed
    for x, y in zip(decode_json_images(d), decode_json_images(e), strict=True):
        assert max_diff(x, y) <= 1


def test_unconditional_rgb_model(client: httpx.Client) -> None:
    r = client.post("/generate", json={"model": UNCOND, "num_images": 2, "seed": 1})
    assert r.status_code == 200, r.text
    imgs = r.json()["images"]
    assert [i["class_label"] for i in imgs] == [None, None]
    assert decode_json_images(r.json())[0].shape == (8, 8, 3)
    bad = client.post("/generate", json={"model": UNCOND, "class_labels": 1})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "class_labels"


def test_request_larger_than_batch_is_split_and_reassembled(client: httpx.Client, server: LiveServer) -> None:
    n = server.settings.max_batch_size * 2 + 3
    big = client.post("/generate", json={"num_images": n, "seed": 50, "class_labels": 5})
    assert big.status_code == 200, big.text
    body = big.json()
    assert [i["seed"] for i in body["images"]] == list(range(50, 50 + n))
    assert body["timing"]["batch_size"] <= server.settings.max_batch_size
    imgs = decode_json_images(body)
    for k in (0, server.settings.max_batch_size, n - 1):
        lone = client.post("/generate", json={"seed": 50 + k, "class_labels": 5}).json()
        assert max_diff(imgs[k], decode_json_images(lone)[0]) <= 1


def test_models_listing(client: httpx.Client) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    data = r.json()
    assert data["default"] == COND
    assert [m["id"] for m in data["data"]] == [COND, UNCOND]  # default first; the classifier dir is ignored
    cond = data["data"][0]
    assert cond["status"] == "ready" and cond["label_dim"] == 10 and cond["class_names"] == CLASS_NAMES
    assert cond["img_resolution"] == 16 and cond["backend"] == "torch"


def test_health_and_playground(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {COND: "ready", UNCOND: "ready"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/v1/generate", "/generate"} <= set(schema["paths"])
    assert "examples" in str(schema["components"]["schemas"]["GenerateRequest"])
