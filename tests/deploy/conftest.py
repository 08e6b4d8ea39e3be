"""Fixtures for the deploy checks: the real service under uvicorn, a real Prometheus, repo paths."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import make_tiny_generator_dir

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TINY_MODEL = "tiny"
_LISTENING = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")


@dataclass
class RunningService:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(
    env: dict[str, str], log: Path, argv: list[str] | None = None, cwd: Path | None = None, timeout: float = 240
) -> RunningService:
    """Start the service (``python -m service`` by default) on 127.0.0.1, an OS-chosen port, and wait for /readyz.

    ``env`` is the whole environment of the process; ONESTEP_HOST and ONESTEP_PORT are set here.
    """
    env = {**env, "ONESTEP_HOST": "127.0.0.1", "ONESTEP_PORT": "0"}
    argv = argv or [sys.executable, "-m", "service"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd or REPO, stdout=out, stderr=subprocess.STDOUT)
    service = RunningService("", proc, log)
    deadline = time.monotonic() + timeout
    try:
        while not service.url:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
            m = _LISTENING.search(log.read_text(errors="replace"))
            if m:
                service.url = f"http://{m.group(1)}:{m.group(2)}"
            else:
                time.sleep(0.2)
        while True:
            try:
                if httpx.get(service.url + "/readyz", timeout=5).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service never became ready (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
    except BaseException:
        service.stop()
        raise


def service_env(models_dir: Path, default_model: str = TINY_MODEL) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESTEP_")}
    env.update(
        ONESTEP_MODELS_DIR=str(models_dir),
        ONESTEP_DEFAULT_MODEL=default_model,
        ONESTEP_BACKEND="torch",  # as the images set it (the default, auto, would export model.onnx first)
        ONESTEP_MAX_BATCH_SIZE="4",  # warm-up runs every batch size: keep it short on 2 shared cores
        ONESTEP_TORCH_THREADS="1",
    )
    return env


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The real service on a tiny random-weight model, after one successful /generate (histograms have series)."""
    root = tmp_path_factory.mktemp("live")
    make_tiny_generator_dir(root / "models" / TINY_MODEL)
    service = start_service(service_env(root / "models"), root / "service.log")
    try:
        r = httpx.post(service.url + "/generate", json={"num_images": 2, "seed": 1, "class_labels": 3}, timeout=60)
        assert r.status_code == 200, r.text
        yield service
    finally:
        service.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningPrometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus rejected {expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus server not installed (Debian package `prometheus`)")
    return binary


def start_prometheus(
    workdir: Path, target: str, scrape_interval: str = "1s", with_rules: bool = True
) -> RunningPrometheus:
    """A real Prometheus with deploy/prometheus.yml's settings, scraping ``target`` (host:port) and evaluating
    deploy/prometheus/rules.yml every second (group intervals shortened; the expressions are unchanged)."""
    binary = prometheus_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=scrape_interval, scrape_timeout=scrape_interval, evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "onestep")
    job.pop("dns_sd_configs", None)
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    config["rule_files"] = []
    if with_rules:
        rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config["rule_files"] = ["rules.yml"]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = workdir / "prometheus.log"
    for _attempt in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
            )
        prom = RunningPrometheus(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(prom.url + "/-/ready", timeout=2).status_code == 200:
                    return prom
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        prom.stop()
    raise RuntimeError(f"Prometheus did not start:\n{log.read_text()[-3000:]}")
