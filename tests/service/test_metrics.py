"""/metrics counts, the Server-Timing header, and a real Prometheus server scraping the app."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import COND, UNCOND, LiveServer
from tests.service.helpers import metric_value

SERVER_TIMING = re.compile(
    r"^queue;dur=(?P<queue>[\d.]+), inference;dur=(?P<inference>[\d.]+), "
    r"encode;dur=(?P<encode>[\d.]+), total;dur=(?P<total>[\d.]+)$"
)


def test_counts_after_known_requests(serve: Callable[..., LiveServer]) -> None:
    live = serve()
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for i in range(5):
            assert c.post("/generate", json={"num_images": 2, "seed": i}).status_code == 200
        for i in range(3):  # the versioned path and its alias are timed alike
            assert c.post("/v1/generate", json={"model": UNCOND, "seed": i, "format": "jpeg"}).status_code == 200
        assert c.post("/v1/generate", json={"num_images": 0}).status_code == 422
        assert c.post("/generate", json={"num_images": 1000}).status_code == 413
        text = c.get("/metrics").text
    v = lambda s: metric_value(text, s)  # noqa: E731
    assert v(f'onestep_request_duration_seconds_count{{model="{COND}",status="200"}}') == 5
    assert v(f'onestep_request_duration_seconds_count{{model="{UNCOND}",status="200"}}') == 3
    assert v('onestep_request_duration_seconds_count{model="unknown",status="422"}') == 1
    assert v(f'onestep_request_duration_seconds_count{{model="{COND}",status="413"}}') == 1
    assert v(f'onestep_images_generated_total{{model="{COND}"}}') == 10
    assert v(f'onestep_images_generated_total{{model="{UNCOND}"}}') == 3
    assert v(f'onestep_batch_size_sum{{model="{COND}"}}') == 10
    assert v(f'onestep_batch_size_count{{model="{COND}"}}') == 5
    assert v(f'onestep_queue_wait_seconds_count{{model="{COND}"}}') == 5
    assert v(f'onestep_batch_inference_seconds_count{{backend="torch",model="{COND}"}}') == 5
    assert v('onestep_encode_seconds_count{format="png"}') == 5
    assert v('onestep_encode_seconds_count{format="jpeg"}') == 3
    assert v(f'onestep_queue_depth{{model="{COND}"}}') == 0
    assert v(f'onestep_model_ready{{model="{COND}"}}') == 1
    assert v('onestep_rejected_requests_total{reason="too_large"}') == 1
    assert v('onestep_rejected_requests_total{reason="queue_full"}') == 0
    # Millisecond buckets.
    assert f'onestep_request_duration_seconds_bucket{{le="0.0005",model="{COND}",status="200"}}' in text
    assert 'onestep_batch_size_bucket{le="128.0",model="' in text


def test_server_timing_header_matches_body(client: httpx.Client) -> None:
    r = client.post("/generate", json={"num_images": 2, "seed": 9})
    m = SERVER_TIMING.match(r.headers["server-timing"])
    assert m, r.headers["server-timing"]
    timing = r.json()["timing"]
    for key in ("queue", "inference", "encode", "total"):
        assert float(m[key]) == pytest.approx(timing[f"{key}_ms"], abs=1e-3)
    assert float(m["total"]) >= float(m["inference"]) > 0
    assert r.headers["x-batch-size"] == str(timing["batch_size"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_prometheus_scrapes_and_answers_promql(server: LiveServer, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus')")
    target = urllib.parse.urlsplit(server.url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: onestep\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(7):
                assert c.post("/generate", json={"seed": i}).status_code == 200
            expected = metric_value(
                c.get("/metrics").text, f'onestep_request_duration_seconds_count{{model="{COND}",status="200"}}'
            )
        query = f'sum(onestep_request_duration_seconds_count{{job="onestep",model="{COND}",status="200"}})'
        value, end = None, time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:
            while time.monotonic() < end:
                try:
                    result = prom.get("/api/v1/query", params={"query": query}).json()
                except (httpx.HTTPError, json.JSONDecodeError):
                    result = {}
                if result.get("status") == "success" and result["data"]["result"]:
                    value = float(result["data"]["result"][0]["value"][1])
                    if value >= expected:
                        break
                time.sleep(0.5)
            assert value == expected
            targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert targets[0]["health"] == "up"
    finally:
        proc.terminate()
        proc.wait(10)
