"""X-Request-ID on every response (the client's when valid, else a new uuid4 hex), errors from the guards and
404s included, and in the JSON access and error logs of `python -m service` end to end."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.logs import REQUEST_ID, JsonFormatter, new_request_id
from tests.service.conftest import COND, UNCOND, LiveServer
from tests.service.test_metrics import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = {"Authorization": "Bearer k"}
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def requests_of_every_kind(c: httpx.Client, headers: dict[str, str | bytes]) -> list[tuple[int, httpx.Response]]:
    def ask(
        status: int, method: str, path: str, key: bool = True, accept: str | None = None, **kwargs: object
    ) -> tuple[int, httpx.Response]:
        sent = {**headers, **(KEY if key else {}), **({"Accept": accept} if accept else {})}
        return status, c.request(method, path, headers=sent, **kwargs)

    return [
        ask(200, "POST", "/v1/generate", json={"seed": 1}),
        ask(200, "POST", "/generate", json={"seed": 1}, accept="image/png"),
        ask(401, "POST", "/v1/generate", key=False, json={"seed": 1}),
        ask(401, "GET", "/v1/models", key=False),
        ask(413, "POST", "/v1/generate", content=b"{" + b" " * 2048 + b"}"),
        ask(413, "POST", "/v1/generate", json={"num_images": 1000}),
        ask(422, "POST", "/v1/generate", json={"num_images": 0}),
        ask(404, "POST", "/v1/generate", json={"model": "no-such-model"}),
        ask(404, "GET", "/no/such/route"),
        ask(404, "POST", "/v1/models/reload"),  # admin endpoints off
        ask(405, "GET", "/v1/generate"),
        ask(200, "GET", "/v1/models"),
        ask(200, "GET", "/healthz", key=False),
        ask(200, "GET", "/readyz", key=False),
        ask(200, "GET", "/metrics", key=False),
        ask(200, "GET", "/", key=False),
    ]


def test_every_response_carries_a_request_id(serve: Callable[..., LiveServer]) -> None:
    live = serve(api_keys=["k"], max_body_bytes=1024)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        made = requests_of_every_kind(c, {})
        for status, r in made:
            assert r.status_code == status, (r.request.url, r.text)
            assert HEX_ID.match(r.headers["x-request-id"]), (r.request.url, r.headers)
        assert len({r.headers["x-request-id"] for _, r in made}) == len(made)  # a new one each time

        for status, r in requests_of_every_kind(c, {"X-Request-ID": "trace-42 from the client"}):
            assert r.status_code == status and r.headers["x-request-id"] == "trace-42 from the client"

        longest = "a" * 128
        assert c.get("/healthz", headers={"X-Request-ID": longest}).headers["x-request-id"] == longest
        for bad in ("a" * 129, b"caf\xe9"):  # too long, not ASCII: replaced
            assert HEX_ID.match(c.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"])


def test_generated_ids_are_uuid4_hex() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        value = uuid.UUID(hex=text)
        assert value.hex == text and value.version == 4 and value.variant == uuid.RFC_4122


def test_json_formatter_writes_the_request_id_of_the_request_being_served() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("service", logging.ERROR, __file__, 1, "model %s failed", ("m",), None)
    token = REQUEST_ID.set("trace-7")
    try:
        line = json.loads(formatter.format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "trace-7" and line["message"] == "model m failed" and line["level"] == "error"
    assert "request_id" not in json.loads(formatter.format(record))  # outside a request: none


@pytest.mark.slow
def test_json_access_and_error_logs_of_python_m_service(models_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir / COND, models / COND)
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:alice-key\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESTEP_")}
    env.update(
        ONESTEP_MODELS_DIR=str(models),
        ONESTEP_DEFAULT_MODEL=COND,
        ONESTEP_PORT=str(port),
        ONESTEP_BACKEND="torch",
        ONESTEP_MAX_BATCH_SIZE="2",
        ONESTEP_TORCH_THREADS="1",
        ONESTEP_API_KEYS_FILE=str(keys),
        ONESTEP_ADMIN_KEYS="admin-key",
        ONESTEP_LOG_FORMAT="json",
        ONESTEP_ACCESS_LOG="true",
    )
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            end = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < end, log.read_text()
                time.sleep(0.1)
            alice = {"Authorization": "Bearer alice-key", "X-Request-ID": "trace-generate"}
            assert c.post("/v1/generate", json={"seed": 1}, headers=alice).status_code == 200
            shutil.copytree(models_dir / UNCOND, models / "broken")
            weights = models / "broken" / "generator.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
            admin = {"Authorization": "Bearer admin-key", "X-Request-ID": "trace-reload"}
            assert c.post("/v1/models/broken/reload", headers=admin).status_code == 422
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    assert any(x["message"] == "Application startup complete." for x in lines)
    (access,) = [x for x in lines if x["logger"] == "service.access" and x.get("request_id") == "trace-generate"]
    assert (access["method"], access["path"], access["status"], access["model"]) == ("POST", "/v1/generate", 200, COND)
    assert access["key"] == "alice" and len(access["model_version"]) == 12 and access["duration_ms"] > 0
    errors = [x for x in lines if x["level"] == "error" and x.get("request_id") == "trace-reload"]
    assert any("reload refused" in x["message"] for x in errors), errors
    assert "alice-key" not in log.read_text() and "admin-key" not in log.read_text()
