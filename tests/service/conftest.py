"""Service fixtures: tiny random-weight model dirs and real uvicorn servers on 127.0.0.1 random ports."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from service.config import Settings
from service.lifespan import ServiceState
from service.main import create_app
from training.checkpoint import save_model
from training.configs import network_config
from training.precond import D2OPrecond, OneStepGenerator

COND = "tiny-cond"  # 16x16 grey, 10 classes: the default model in these tests
UNCOND = "tiny-uncond"  # 8x8 RGB, unconditional
CLASS_NAMES = [f"class-{i}" for i in range(10)]


def make_generator(resolution: int, channels: int, label_dim: int, seed: int = 0) -> OneStepGenerator:
    torch.manual_seed(seed)
    kw = network_config("tiny")
    model_type = kw.pop("model_type")
    if resolution < 16:
        kw["attn_resolutions"] = []
    net = D2OPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, model_type=model_type, **kw)
    # EDM zero-initialises output layers, so a fresh net draws flat grey images that would make every
    # determinism check pass trivially. Random weights everywhere give images that depend on noise and class.
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2:
                p.normal_(0, 1.5 / math.sqrt(p[0].numel()))
    return OneStepGenerator(net).eval()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_model(make_generator(16, 1, 10), root / COND, class_names=CLASS_NAMES)
    save_model(make_generator(8, 3, 0, seed=1), root / UNCOND)
    # A model dir of another kind (e.g. the FD classifier) must be ignored.
    (root / "some-classifier").mkdir()
    (root / "some-classifier" / "config.json").write_text(json.dumps({"kind": "classifier", "format_version": 1}))
    return root


class LiveServer:
    """create_app + uvicorn.Server in a background thread, on a socket bound to a free port."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.app = create_app(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=20, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> ServiceState:
        return self.app.state.service

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> LiveServer:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        if wait_ready:
            with httpx.Client(base_url=self.url, timeout=5) as client:
                while client.get("/readyz").status_code != 200:
                    if time.monotonic() > end:
                        raise RuntimeError(f"not ready: {client.get('/readyz').text}")
                    time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def serve(models_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """serve(**settings) -> a started LiveServer; stopped at teardown."""
    started: list[LiveServer] = []

    def _serve(wait_ready: bool = True, **overrides: object) -> LiveServer:
        settings = default_settings(overrides.pop("models_dir", models_dir), **overrides)
        server = LiveServer(settings).start(wait_ready=wait_ready)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


def default_settings(models_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        models_dir=models_dir,
        default_model=COND,
        backend="torch",  # the default, auto, would serve through ONNX Runtime here (an export per model dir)
        max_batch_size=8,
        max_wait_ms=2,
        warmup=False,
        torch_threads=1,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[LiveServer]:
    """One server with default test settings, shared by a test module."""
    live = LiveServer(default_settings(models_dir)).start()
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
