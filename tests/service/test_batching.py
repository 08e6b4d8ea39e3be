"""Batcher behaviour through the real server: batching determinism, queue bound, deadline, disconnects, drain."""

from __future__ import annotations

import asyncio
import base64
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests.service.conftest import COND, UNCOND, LiveServer
from tests.service.helpers import decode_json_images, max_diff, metric_value


async def burst(url: str, payloads: list[dict], timeout: float = 60) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        return await asyncio.gather(*(c.post("/generate", json=p) for p in payloads))


def raw_pixels(image: dict) -> np.ndarray:
    """A format-raw JSON image as an H x W (grey) or H x W x C array, as PNG decoding gives it."""
    pixels = np.frombuffer(base64.b64decode(image["data"]), np.uint8).reshape(image["shape"])
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def test_batched_images_equal_lone_images(serve: Callable[..., LiveServer]) -> None:
    """The same (model, seed, class) gives the same pixels whatever shares its batch, in every format: PNG and raw
    pixels in a batch, then alone as PNG, as raw JSON and as an application/octet-stream body."""
    live = serve(max_batch_size=16, max_wait_ms=300)
    payloads = [{"seed": 1000 + 17 * i, "class_labels": i % 10, "format": "raw" if i % 2 else "png"} for i in range(16)]
    together = asyncio.run(burst(live.url, payloads))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    sizes = [r.json()["timing"]["batch_size"] for r in together]
    assert max(sizes) > 1, sizes  # they really shared batches
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for p, r in zip(payloads, together, strict=True):
            image = r.json()["images"][0]
            batched = raw_pixels(image) if p["format"] == "raw" else decode_json_images(r.json())[0]
            alone = c.post("/generate", json={**p, "format": "png"}).json()
            assert alone["timing"]["batch_size"] == 1
            assert max_diff(decode_json_images(alone)[0], batched) <= 1
            alone_raw = raw_pixels(c.post("/generate", json={**p, "format": "raw"}).json()["images"][0])
            octet = c.post("/generate", json=p, headers={"Accept": "application/octet-stream"})
            assert octet.headers["x-shape"] == "1,16,16,1"
            pixels = np.frombuffer(octet.content, np.uint8).reshape(16, 16)
            assert max_diff(alone_raw, batched) <= 1 and np.array_equal(pixels, alone_raw)


def test_queue_full_burst_gets_503_with_retry_after(serve: Callable[..., LiveServer]) -> None:
    # The first batch waits 4 s for company, so the burst finds the queue as it left it.
    live = serve(max_queue_images=4, max_wait_ms=4000, idle_dispatch=False, max_batch_size=64, retry_after_s=2)
    responses = asyncio.run(burst(live.url, [{"seed": i} for i in range(10)]))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 4 + [503] * 6
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["type"] == "queue_full" and r.headers["retry-after"] == "2"
    with httpx.Client(base_url=live.url) as c:
        text = c.get("/metrics").text
    assert metric_value(text, 'onestep_rejected_requests_total{reason="queue_full"}') == 6
    assert metric_value(text, f'onestep_queue_depth{{model="{COND}"}}') == 0
    assert metric_value(text, f'onestep_batch_size_sum{{model="{COND}"}}') == 4


def test_deadline_gives_504_and_frees_the_queue(serve: Callable[..., LiveServer]) -> None:
    live = serve(request_timeout_s=0.3, max_wait_ms=5000, idle_dispatch=False, max_batch_size=64)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        t0 = time.monotonic()
        r = c.post("/generate", json={"num_images": 3})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert time.monotonic() - t0 < 3
        text = c.get("/metrics").text
    assert metric_value(text, 'onestep_rejected_requests_total{reason="deadline"}') == 1
    assert metric_value(text, f'onestep_queue_depth{{model="{COND}"}}') == 0
    assert metric_value(text, f'onestep_request_duration_seconds_count{{model="{COND}",status="504"}}') == 1


def test_disconnected_client_frees_its_slots_before_compute(serve: Callable[..., LiveServer]) -> None:
    live = serve(max_queue_images=4, max_wait_ms=4000, idle_dispatch=False, max_batch_size=64)
    batcher = live.state.models[COND].batcher
    with httpx.Client(base_url=live.url, timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/generate", json={"num_images": 4, "seed": 1})
    end = time.monotonic() + 5
    while batcher.queued_images and time.monotonic() < end:
        time.sleep(0.02)
    assert batcher.queued_images == 0  # slots freed at once, long before the batch would have run
    with httpx.Client(base_url=live.url, timeout=30) as c:
        ok = c.post("/generate", json={"num_images": 4, "seed": 2})
        assert ok.status_code == 200
        text = c.get("/metrics").text
    assert metric_value(text, 'onestep_rejected_requests_total{reason="client_disconnected"}') == 1
    assert metric_value(text, f'onestep_images_generated_total{{model="{COND}"}}') == 4  # the dropped 4 never ran


def test_graceful_shutdown_finishes_in_flight_requests(serve: Callable[..., LiveServer]) -> None:
    live = serve(max_wait_ms=1500, idle_dispatch=False)
    results: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            results.append(c.post("/generate", json={"num_images": 2, "seed": 5}))

    worker = threading.Thread(target=call)
    worker.start()
    end = time.monotonic() + 10
    while live.state.models[COND].batcher.queued_images == 0 and time.monotonic() < end:
        time.sleep(0.01)
    live.stop()  # like SIGTERM: stop accepting, finish what is in flight, then run the lifespan's drain
    worker.join(30)
    assert len(results) == 1 and results[0].status_code == 200
    assert len(results[0].json()["images"]) == 2
    assert live.state.draining and not live.thread.is_alive()
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=live.url, timeout=2) as c:
        c.get("/healthz")


def test_not_ready_model_gives_503(tmp_path: Path, models_dir: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir / COND, root / COND)
    shutil.copytree(models_dir / UNCOND, root / "broken")
    weights = root / "broken" / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    settings = Settings(models_dir=root, default_model=COND, backend="torch", warmup=False, torch_threads=1)
    live = LiveServer(settings).start(wait_ready=False)
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            end = time.monotonic() + 30
            while live.state.models["broken"].status == "loading" and time.monotonic() < end:
                time.sleep(0.02)
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
            err = ready.json()["error"]
            assert err["type"] == "not_ready" and "broken" in err["message"] and "SHA-256" in err["message"]
            r = c.post("/generate", json={"model": "broken"})
            assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready" and "retry-after" in r.headers
            models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            assert models["broken"]["status"] == "failed" and models[COND]["status"] == "ready"
            assert c.post("/generate", json={"seed": 1}).status_code == 200  # the healthy model still serves
            text = c.get("/metrics").text
            assert metric_value(text, 'onestep_model_ready{model="broken"}') == 0
            assert metric_value(text, f'onestep_model_ready{{model="{COND}"}}') == 1
    finally:
        live.stop()


def test_warmup_runs_every_batch_size_before_ready(serve: Callable[..., LiveServer]) -> None:
    live = serve(warmup=True, max_batch_size=3)
    with httpx.Client(base_url=live.url) as c:
        assert c.get("/readyz").status_code == 200
        # Warm-up batches are not requests: nothing counted yet.
        assert metric_value(c.get("/metrics").text, f'onestep_images_generated_total{{model="{COND}"}}') == 0
    assert live.state.models[COND].backend.warmup_sizes(3) == [1, 2, 3]
