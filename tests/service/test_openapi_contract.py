"""Every answer of POST /v1/generate and its alias /generate matches the app's own OpenAPI document.

For success (JSON and raw image) and each error kind (422, 404, 406, 413, 401, 503 queue full and not ready,
504; 429 in tests/service/test_keys.py), on both paths: the status is documented for the operation, the media
type is declared for it, a JSON body validates against the declared schema (resolved in the document's
components) and required headers (X-Request-ID on every answer) are there.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from service.middleware import GENERATE_PATHS
from tests.service.conftest import COND, UNCOND, LiveServer, default_settings

KEY = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def openapi(server: LiveServer) -> dict[str, Any]:
    return httpx.get(server.url + "/openapi.json", timeout=30).json()


def conforms(openapi: dict[str, Any], path: str, r: httpx.Response, status: int, type: str | None = None) -> None:
    assert r.status_code == status, r.text
    documented = openapi["paths"][path]["post"]["responses"]
    assert str(status) in documented, f"POST {path} answered {status}, which its OpenAPI operation does not list"
    response = documented[str(status)]
    media = r.headers["content-type"].split(";", 1)[0]
    assert media in response["content"], f"{media} is not declared for {status} on POST {path}"
    for name, header in response.get("headers", {}).items():
        assert not header.get("required") or name in r.headers, f"{status} on POST {path} lacks {name}"
    if media == "application/json":
        schema = {**response["content"][media]["schema"], "components": openapi["components"]}
        Draft202012Validator(schema).validate(r.json())
    if type is not None:
        assert r.json()["error"]["type"] == type


def test_both_paths_document_one_operation(openapi: dict[str, Any]) -> None:
    v1, alias = (openapi["paths"][path]["post"] for path in GENERATE_PATHS)
    assert GENERATE_PATHS == ("/v1/generate", "/generate")
    for key in ("requestBody", "responses", "tags"):
        assert v1[key] == alias[key]
    assert v1["operationId"] != alias["operationId"]
    assert set(v1["responses"]) == {"200", "401", "404", "406", "413", "422", "429", "503", "504"}
    assert all(response["headers"]["X-Request-ID"]["required"] for response in v1["responses"].values())
    for schema in openapi["components"]["schemas"].values():  # every schema in the document is a valid one
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", GENERATE_PATHS)
def test_success_and_request_errors_match_the_schema(
    openapi: dict[str, Any], client: httpx.Client, server: LiveServer, path: str
) -> None:
    def post(status: int, type: str | None = None, **kwargs: Any) -> httpx.Response:
        r = client.post(path, **kwargs)
        conforms(openapi, path, r, status, type)
        return r

    body = post(200, json={"num_images": 2, "class_labels": [1, 2], "seed": 5, "format": "webp"}).json()
    assert [img["seed"] for img in body["images"]] == [5, 6]
    assert body["model_version"] == server.state.models[COND].version
    assert post(200, json={"model": UNCOND, "format": "jpeg", "quality": 50}).json()["model"] == UNCOND
    raw = post(200, json={"seed": 5, "class_labels": 1}, headers={"Accept": "image/png"})
    assert raw.content.startswith(b"\x89PNG") and raw.headers["x-seed"] == "5" and raw.headers["x-class-label"] == "1"
    pixels = post(200, json={"num_images": 2, "format": "raw", "seed": 5}).json()["images"]  # base64 pixels in JSON
    assert [(img["shape"], img["dtype"], img["media_type"]) for img in pixels] == [
        ([16, 16, 1], "uint8", "application/octet-stream")
    ] * 2
    octet = post(200, json={"num_images": 2, "seed": 5}, headers={"Accept": "application/octet-stream"})
    assert octet.headers["x-shape"] == "2,16,16,1" and octet.headers["x-dtype"] == "uint8" and len(octet.content) == 512
    documented = openapi["paths"][path]["post"]["responses"]["200"]["headers"]
    assert {"X-Shape", "X-Dtype", "X-Class-Labels"} <= set(documented)
    assert "raw" in openapi["components"]["schemas"]["GenerateRequest"]["properties"]["format"]["enum"]
    assert raw.headers["server-timing"].startswith("queue;dur=")
    for payload in ({"num_images": 0}, {"seed": -1}, {"format": "gif"}, {"colour": 1}, {"class_labels": 10}):
        post(422, "validation_error", json=payload)
    post(422, "validation_error", content=b"{broken", headers={"content-type": "application/json"})
    post(422, "validation_error", content=b"x=1", headers={"content-type": "text/plain"})
    post(422, "validation_error", content=b"")
    post(404, "model_not_found", json={"model": "no-such-model"})
    post(406, "not_acceptable", json={"num_images": 2}, headers={"Accept": "image/png"})
    post(413, "too_large", json={"num_images": server.settings.max_images_per_request + 1})
    post(413, "too_large", content=b'{"model": "' + b"x" * server.settings.max_body_bytes + b'"}')
    post(413, "too_large", content=(b" " * 1024 for _ in range(100)), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """API keys, a queue of 4 images whose batches wait 5 s for company, a 1.5 s deadline, a broken model."""
    root = tmp_path_factory.mktemp("guarded-models")
    shutil.copytree(models_dir / COND, root / COND)
    shutil.copytree(models_dir / UNCOND, root / "broken")
    weights = root / "broken" / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    settings = default_settings(
        root,
        api_keys=["k"],
        max_queue_images=4,
        max_batch_size=64,
        max_wait_ms=5000,
        idle_dispatch=False,
        request_timeout_s=1.5,
    )
    live = LiveServer(settings).start(wait_ready=False)
    end = time.monotonic() + 60
    while "loading" in {entry.status for entry in live.state.models.values()}:
        assert time.monotonic() < end, "models still loading"
        time.sleep(0.02)
    yield live
    live.stop()


@pytest.mark.parametrize("path", GENERATE_PATHS)
def test_guard_and_batcher_errors_match_the_schema(openapi: dict[str, Any], guarded: LiveServer, path: str) -> None:
    batcher = guarded.state.models[COND].batcher
    assert batcher is not None
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            conforms(openapi, path, c.post(path, json={"seed": 1}, headers=headers), 401, "unauthorized")
        conforms(openapi, path, c.post(path, json={"model": "broken"}, headers=KEY), 503, "not_ready")

        # Four images fill the queue and wait for company past their deadline; the next request finds it full.
        late: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: late.append(c.post(path, json={"num_images": 4}, headers=KEY)))
        waiter.start()
        end = time.monotonic() + 10
        while batcher.queued_images < 4 and time.monotonic() < end:
            time.sleep(0.005)
        full = c.post(path, json={"seed": 1}, headers=KEY)
        waiter.join(30)
        conforms(openapi, path, full, 503, "queue_full")
        assert full.headers["retry-after"] == "1"
        conforms(openapi, path, late[0], 504, "timeout")
