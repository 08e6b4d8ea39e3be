"""`python -m service` serves with the settings from the environment, and drains on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.conftest import COND
from tests.service.test_metrics import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_service(models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ONESTEP_MODELS_DIR": str(models_dir),
        "ONESTEP_DEFAULT_MODEL": COND,
        "ONESTEP_PORT": str(port),
        "ONESTEP_BACKEND": "torch",  # the default, auto, would export model.onnx for ONNX Runtime first
        "ONESTEP_MAX_BATCH_SIZE": "2",
        "ONESTEP_TORCH_THREADS": "1",
        "ONESTEP_API_KEYS": "sesame",
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 90
        with httpx.Client(base_url=url, timeout=10) as c:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < end, log.read_text()
                time.sleep(0.1)
            assert c.post("/generate", json={"seed": 1}).status_code == 401
            r = c.post("/generate", json={"seed": 1}, headers={"Authorization": "Bearer sesame"})
            assert r.status_code == 200 and r.json()["model"] == COND
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the lifespan shutdown, then re-raises the signal it caught.
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
