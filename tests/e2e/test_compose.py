"""The compose stack for real: build the CPU image, `up -d`, and check it as a user and an operator would.

Runs through scripts/compose.sh (docker compose where a Docker daemon answers, podman-compose otherwise) under its
own project name and loopback ports, so a stack a developer runs is left alone. In order: the image is lean
(CPU torch, no nvidia-* wheels, no exporter packages) with a HEALTHCHECK; the container turns healthy;
POST /generate returns a PNG pixel-identical to the service run outside the container with the same backend and
model.onnx; Prometheus scrapes the target and lists the project's alert rules; the container is not root, its root
filesystem is read-only, no password or pip configuration is baked in; SIGTERM drains in-flight requests within the
grace period; an alert turns pending or firing once the service is gone; `down -v` leaves no container or volume.

Deselect locally with `-m "not containers"`. Skipped only where no container engine is installed; in CI on a Debian
machine (where scripts/install.sh dev installs podman) a missing engine is a failure. Measurements (build time,
image size, cold start, idle memory) are printed and written to $ONESTEP_E2E_MEASUREMENTS when set.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.deploy.conftest import REPO, free_port, start_service

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

PROJECT = "onestep-e2e"
IMAGE = "onestep:e2e"
MAX_IMAGE_BYTES = 1.5e9
GRACE_S = 40  # compose.yaml's stop_grace_period


def _runs(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> str:
    if shutil.which("docker") and _runs(["docker", "compose", "version"]) and _runs(["docker", "info"]):
        return "docker"
    if shutil.which("podman") and _runs(["podman", "info"]):
        return "podman"
    if os.environ.get("CI") and shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail("CI on Debian as root, yet no container engine runs: scripts/install.sh dev installs podman")
    pytest.skip("no container engine (Docker with compose and a daemon, or podman): scripts/install.sh dev "
                "installs podman and podman-compose on Debian")


@dataclass
class Stack:
    engine: str
    env: dict[str, str]
    url: str
    prometheus: str
    log: Path
    measured: dict[str, object] = field(default_factory=dict)
    down_done: bool = False

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        with open(self.log, "a") as out:
            out.write(f"\n$ scripts/compose.sh -p {PROJECT} {' '.join(args)}\n")
            out.flush()
            r = subprocess.run(["bash", "scripts/compose.sh", "-p", PROJECT, *args], cwd=REPO, env=self.env,
                               stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"compose {' '.join(args)} failed ({r.returncode}):\n{self.log.read_text()[-5000:]}")
        return r

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([self.engine, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"{self.engine} {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r

    def containers(self, service: str | None = None, all_states: bool = True) -> list[str]:
        argv = ["ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            argv.append("-a")
        return self.cli(*argv).stdout.split()

    def service_container(self) -> str:
        ids = self.containers("onestep")
        assert len(ids) == 1, f"expected one onestep container, found {ids}"
        return ids[0]

    def inspect(self, what: str) -> dict:
        return json.loads(self.cli("inspect", what).stdout)[0]

    def health(self, container: str) -> str:
        if self.engine == "podman":
            # podman schedules health checks with systemd timers; where systemd is not running the check runs here,
            # on demand: the same command, interval and status bookkeeping, triggered by this loop.
            self.cli("healthcheck", "run", container, check=False)
        state = self.inspect(container)["State"]
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")


def measure(stack: Stack, key: str, value: object) -> None:
    stack.measured[key] = value
    print(f"[compose e2e] {key}: {value}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = find_engine()
    tmp = tmp_path_factory.mktemp("compose")
    env = dict(os.environ)
    for key in ("ONESTEP_BACKEND", "ONESTEP_IMAGE", "ONESTEP_DOCKERFILE", "ONESTEP_API_KEYS"):
        env.pop(key, None)
    port, prom_port = free_port(), free_port()
    env.update(
        ONESTEP_IMAGE=IMAGE,
        ONESTEP_PUBLISH=f"127.0.0.1:{port}",
        PROMETHEUS_PUBLISH=f"127.0.0.1:{prom_port}",
        GRAFANA_PUBLISH=f"127.0.0.1:{free_port()}",
        GRAFANA_ADMIN_PASSWORD=base64.urlsafe_b64encode(os.urandom(18)).decode(),
        ONESTEP_ENGINE=engine,
    )
    s = Stack(engine, env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}", tmp / "compose.log")
    s.compose("down", "-v", check=False)  # a stack left by an interrupted run
    try:
        t0 = time.monotonic()
        s.compose("build", "onestep", timeout=3000)
        measure(s, "build_s", round(time.monotonic() - t0, 1))
        t0 = time.monotonic()
        s.compose("up", "-d", timeout=900)
        container = s.service_container()
        deadline = time.monotonic() + 300
        ready_s = None
        while True:
            try:
                if ready_s is None and httpx.get(s.url + "/readyz", timeout=3).status_code == 200:
                    ready_s = round(time.monotonic() - t0, 1)
            except httpx.HTTPError:
                pass
            status = s.health(container)
            if status == "healthy" and ready_s is not None:
                break
            if time.monotonic() > deadline:
                logs = s.cli("logs", container, check=False)
                pytest.fail(f"not healthy after 300 s (health {status!r}, ready {ready_s}):\n"
                            f"{(logs.stdout + logs.stderr)[-4000:]}")
            time.sleep(1)
        measure(s, "cold_start_to_ready_s", ready_s)
        measure(s, "cold_start_to_healthy_s", round(time.monotonic() - t0, 1))
        time.sleep(5)
        stats = s.cli("stats", "--no-stream", "--format", "{{.MemUsage}}", container, check=False)
        measure(s, "idle_memory", stats.stdout.strip() or stats.stderr.strip())
        yield s
    finally:
        if not s.down_done:
            s.compose("down", "-v", check=False)
        if os.environ.get("ONESTEP_E2E_MEASUREMENTS"):
            Path(os.environ["ONESTEP_E2E_MEASUREMENTS"]).write_text(json.dumps(s.measured, indent=2) + "\n")


def run_in_image(stack: Stack, *argv: str) -> subprocess.CompletedProcess:
    return stack.cli("run", "--rm", "--entrypoint", argv[0], IMAGE, *argv[1:], check=False, timeout=300)


def test_image_is_lean_cpu_only_and_has_a_healthcheck(stack: Stack):
    image = stack.inspect(IMAGE)
    size = int(image["Size"])
    measure(stack, "image_bytes", size)
    assert size <= MAX_IMAGE_BYTES, f"image is {size / 1e9:.2f} GB, over 1.5 GB"
    config = image["Config"]
    health = config.get("Healthcheck") or image.get("Healthcheck") or {}  # docker: under Config; podman: top level
    assert health.get("Test"), "HEALTHCHECK missing (OCI format? build with --format docker)"
    assert "/healthz" in " ".join(health["Test"])
    assert config["User"].split(":")[0] not in ("", "0", "root")
    probe = run_in_image(stack, "python", "-c", (
        "import importlib.util as u, importlib.metadata as m, torch, onnxruntime;"
        "print(torch.__version__, torch.version.cuda, onnxruntime.__version__);"
        "names = [d.metadata['Name'] for d in m.distributions()];"
        "print(sorted(n for n in names if n.lower().startswith('nvidia')));"
        "print(u.find_spec('onnx') is None and u.find_spec('onnxscript') is None)"))
    assert probe.returncode == 0, probe.stderr
    versions, nvidia, no_exporter = probe.stdout.splitlines()[-3:]
    torch_version, cuda, ort_version = versions.split()
    measure(stack, "image_torch", torch_version)
    measure(stack, "image_onnxruntime", ort_version)
    assert cuda == "None" and nvidia == "[]", f"CUDA torch in the image: {versions} {nvidia}"
    assert no_exporter == "True", "onnx/onnxscript belong to the build stage only"
    du = run_in_image(stack, "sh", "-c", "du -sm /usr /opt/venv /app 2>/dev/null; "
                      "du -sm /opt/venv/lib/python3*/site-packages/* | sort -n | tail -4")
    measure(stack, "image_du_mb", " | ".join(line.replace("\t", " ") for line in du.stdout.splitlines()))


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return np.asarray(Image.open(io.BytesIO(data)))


def generate(url: str, seed: int, n: int) -> list[np.ndarray]:
    r = httpx.post(url + "/generate", json={"num_images": n, "seed": seed, "class_labels": 3}, timeout=120)
    assert r.status_code == 200, r.text
    return [decode_png(base64.b64decode(img["data"])) for img in r.json()["images"]]


def test_generate_is_pixel_identical_to_the_host_service(stack: Stack, tmp_path):
    r = httpx.post(stack.url + "/generate", json={"seed": 7, "class_labels": 3},
                   headers={"accept": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    in_container = [decode_png(r.content), *generate(stack.url, 100, 4)]

    # The same model dir outside the container, with the model.onnx the image exported at build time.
    model = tmp_path / "models" / "fmnist-d2o"
    shutil.copytree(REPO / "models" / "fmnist-d2o", model, ignore=shutil.ignore_patterns("model*.onnx"))
    cp = stack.cli("cp", f"{stack.service_container()}:/app/models/fmnist-d2o/model.onnx", str(model / "model.onnx"))
    assert cp.returncode == 0
    results = {}
    for backend in ("onnxruntime", "torch"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESTEP_")}
        env.update(ONESTEP_MODELS_DIR=str(model.parent), ONESTEP_BACKEND=backend, ONESTEP_MAX_BATCH_SIZE="4",
                   ONESTEP_TORCH_THREADS="1")
        host = start_service(env, tmp_path / f"host-{backend}.log")
        try:
            r = httpx.post(host.url + "/generate", json={"seed": 7, "class_labels": 3},
                           headers={"accept": "image/png"}, timeout=60)
            assert r.status_code == 200, r.text
            results[backend] = [decode_png(r.content), *generate(host.url, 100, 4)]
            log = host.log.read_text()
            assert backend != "onnxruntime" or "exporting" not in log, "the host re-exported model.onnx"
        finally:
            host.stop()
    # Like with like: ONNX Runtime on the image's model.onnx, in and out of the container.
    for got, want in zip(in_container, results["onnxruntime"], strict=True):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.array_equal(got, want), f"max diff {np.abs(got.astype(int) - want).max()} levels"
    # Against the torch backend on the host: the exporter's parity bound (uint8 levels).
    worst = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(in_container, results["torch"], strict=True))
    measure(stack, "max_diff_vs_host_torch_levels", worst)
    assert worst <= 1


def test_prometheus_scrapes_the_service_and_has_the_project_rules(stack: Stack):
    deadline = time.monotonic() + 90
    while True:
        targets = httpx.get(stack.prometheus + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        onestep = [t for t in targets if t["labels"]["job"] == "onestep"]
        if onestep and all(t["health"] == "up" for t in onestep):
            break
        assert time.monotonic() < deadline, f"onestep target never up: {onestep}"
        time.sleep(2)
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    want = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    want_records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    groups = httpx.get(stack.prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert want <= {r["name"] for r in loaded if r["type"] == "alerting"}
    assert want_records <= {r["name"] for r in loaded if r["type"] == "recording"}
    assert all(r.get("health") in ("ok", "unknown") for r in loaded), [r for r in loaded if r.get("health") == "err"]


def host_pip_paths() -> list[str]:
    """Local paths named by this host's pip configuration: none may end up in the image."""
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "config", "list"],
                         capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        for token in line.partition("=")[2].strip("'\"").split():
            token = token.removeprefix("file://")
            if token.startswith("/") and not token.startswith("/etc/ssl"):
                paths.append(token.rstrip("/"))
    return paths


def test_hardening(stack: Stack):
    container = stack.service_container()
    assert stack.cli("exec", container, "id", "-u").stdout.strip() == "10001"
    info = stack.inspect(container)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert stack.cli("exec", container, "sh", "-c", "touch /app/x", check=False).returncode != 0, "/app writable"
    assert stack.cli("exec", container, "sh", "-c", "touch /tmp/x && rm /tmp/x").returncode == 0, "/tmp (tmpfs)"
    # No password, token or key in the image's environment, the compose file or the image's build history.
    image = stack.inspect(IMAGE)
    for item in image["Config"].get("Env") or []:
        name, _, value = item.partition("=")
        if any(word in name.upper() for word in ("PASSWORD", "SECRET", "TOKEN", "API_KEY")):
            assert not value, f"{name} is set in the image"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    grafana_pw = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana_pw.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "Grafana's admin password must have no default"
    assert "admin" not in str(compose["services"]["grafana"]["environment"].values()).replace(
        "the Grafana admin password", "")
    history = stack.cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE).stdout
    for path in host_pip_paths():
        assert path not in history, f"{path} (this host's pip configuration) is in the image history"
    leftovers = run_in_image(stack, "sh", "-c", "test ! -s /etc/pip.conf && test ! -e /root/.cache/pip")
    assert leftovers.returncode == 0, "pip configuration or cache left in the image"


def test_sigterm_drains_in_flight_requests(stack: Stack):
    container = stack.service_container()
    results: list[httpx.Response | BaseException] = []

    def call() -> None:
        try:
            results.append(httpx.post(stack.url + "/generate", json={"num_images": 64, "seed": 1}, timeout=120))
        except BaseException as e:  # noqa: BLE001 - reported below
            results.append(e)

    # Three 64-image requests: 192 images, within the default queue bound (256), so none is turned away for room.
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    # Stop once the requests are queued or computing (the queue-depth gauge counts them), not before.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = httpx.get(stack.url + "/metrics", timeout=5).text
        depth = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("onestep_queue_depth{"))
        if depth > 0 or not any(t.is_alive() for t in threads):
            break
        time.sleep(0.05)
    in_flight = sum(t.is_alive() for t in threads)
    t0 = time.monotonic()
    stack.cli("stop", "-t", str(GRACE_S), container, timeout=GRACE_S + 30)
    stopped_s = time.monotonic() - t0
    for t in threads:
        t.join(timeout=60)
    measure(stack, "sigterm_stop_s", round(stopped_s, 1))
    errors = [r for r in results if not isinstance(r, httpx.Response) or r.status_code != 200]
    assert in_flight > 0, "every request finished before the stop: nothing was in flight"
    measure(stack, "requests_in_flight_at_sigterm", in_flight)
    assert len(results) == 3 and not errors, [(r, getattr(r, "text", "")) for r in errors]
    assert all(len(r.json()["images"]) == 64 for r in results)
    assert stopped_s < GRACE_S, f"stop took {stopped_s:.1f} s: killed at the grace period, not drained"
    state = stack.inspect(container)["State"]
    assert state["ExitCode"] in (0, 143) and not state.get("OOMKilled"), state


def test_an_alert_fires_once_the_service_is_gone(stack: Stack):
    wanted = {"OnestepNoTarget", "OnestepDown"}
    deadline = time.monotonic() + 150
    while True:
        alerts = httpx.get(stack.prometheus + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        hits = [a for a in alerts if a["labels"]["alertname"] in wanted and a["state"] in ("pending", "firing")]
        if hits:
            break
        assert time.monotonic() < deadline, f"no alert within 150 s of the stop: {alerts}"
        time.sleep(3)
    measure(stack, "alert", f"{hits[0]['labels']['alertname']} {hits[0]['state']}")


def test_down_removes_every_container_and_volume(stack: Stack):
    stack.compose("down", "-v", timeout=300)
    stack.down_done = True
    assert stack.containers() == []
    volumes = stack.cli("volume", "ls", "--format", "{{.Name}}").stdout.split()
    left = [v for v in volumes if v.startswith((PROJECT + "_", PROJECT + "-"))]
    labelled = stack.cli("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    assert not left and not labelled, left + labelled
