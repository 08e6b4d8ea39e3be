"""The service's long-lived state on ``app.state.service``: models, backends, batchers, thread pools.

Startup returns at once (so /healthz answers while models load); models load and warm up in the background,
the default model first, and /readyz turns 200 only when every model is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI

from service.backends import Backend, create_backend
from service.batcher import Batcher, resolve_encode_overlap
from service.config import Settings
from service.metrics import Metrics
from training.checkpoint import CONFIG_NAME, ModelConfig, ModelKindError, read_model_config

log = logging.getLogger("service")


@dataclass
class ModelEntry:
    name: str
    path: Path
    backend_name: str
    config: ModelConfig | None = None  # None when config.json could not be read (status 'failed')
    status: Literal["loading", "ready", "failed"] = "loading"
    error: str | None = None
    backend: Backend | None = None
    batcher: Batcher | None = None

    @property
    def label_dim(self) -> int:
        return self.config.label_dim if self.config is not None else 0

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names) if self.config is not None else []

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.batcher is not None and self.batcher.healthy


def discover_models(settings: Settings) -> dict[str, ModelEntry]:
    """Every subdir of models_dir with a config.json of kind 'generator'; the default model first."""
    root = Path(settings.models_dir)
    found: dict[str, ModelEntry] = {}
    if not root.is_dir():
        log.warning("models_dir %s does not exist: no models to serve", root)
        return found
    for sub in sorted(p for p in root.iterdir() if (p / CONFIG_NAME).is_file()):
        config, error = None, None
        try:
            config = read_model_config(sub, kinds=("generator",))
        except ModelKindError:
            continue  # a denoiser's, a classifier's or a run's config.json: not a model to serve
        except Exception as e:  # unreadable or invalid: kept, so that /readyz reports what is wrong
            error = str(e)
        entry = ModelEntry(sub.name, sub, settings.backend_for(sub.name), config=config)
        if error is not None:
            entry.status, entry.error = "failed", error
        found[sub.name] = entry
    if settings.default_model in found:
        found = {settings.default_model: found[settings.default_model], **found}
    return found


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.models = discover_models(settings)
        self.default_model: str | None = next(iter(self.models), None)
        if self.default_model is not None and self.default_model != settings.default_model:
            log.warning("default model %r not found; using %r", settings.default_model, self.default_model)
        for entry in self.models.values():
            self.metrics.model_ready.labels(entry.name).set(0)
        self.infer_pool: ThreadPoolExecutor | None = None
        self.encode_pool: ThreadPoolExecutor | None = None
        self._loader: asyncio.Task | None = None
        self.draining = False
        self._encode_children: dict[str, Any] = {}

    # ------------------------------------------------------------ loading

    def _build(self, entry: ModelEntry) -> Backend:
        assert entry.config is not None  # entries without one are 'failed' and never built
        backend = create_backend(entry.backend_name, entry.path, entry.config, self.settings)
        if self.settings.warmup:
            backend.warmup(self.settings.max_batch_size, should_stop=lambda: self.draining)
        return backend

    async def _load_all(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        for entry in self.models.values():
            if entry.status == "failed":
                log.error("model %s: %s", entry.name, entry.error)
                continue
            try:
                # Built on the inference thread: thread-local runtime state (torch threads, CUDA) lives there.
                backend = await loop.run_in_executor(self.infer_pool, self._build, entry)
            except Exception as e:
                entry.status, entry.error = "failed", f"{type(e).__name__}: {e}"
                log.exception("model %s: loading with backend %s failed", entry.name, entry.backend_name)
                continue
            mm = self.metrics.for_model(entry.name, backend.name)
            entry.backend = backend
            entry.batcher = Batcher(
                entry.name,
                backend,
                self.infer_pool,
                mm,
                max_batch_size=s.max_batch_size,
                max_wait_ms=s.max_wait_ms,
                max_queue_images=s.max_queue_images,
                idle_dispatch=s.idle_dispatch,
                encode_overlap=resolve_encode_overlap(s.encode_overlap, backend),
                encode_pool=self.encode_pool,
                observe_encode=self._observe_encode,
            )
            entry.batcher.stall_after_s = max(60.0, 2 * s.request_timeout_s)
            entry.batcher.start()
            entry.status = "ready"
            mm.ready.set(1)
            log.info(
                "model %s ready (%s, encoding %s)",
                entry.name,
                backend.name,
                "beside inference" if entry.batcher.encode_overlap else "between batches",
            )

    def _observe_encode(self, fmt: str, seconds: float) -> None:
        child = self._encode_children.get(fmt)
        if child is None:
            child = self._encode_children[fmt] = self.metrics.encode.labels(fmt)
        child.observe(seconds)

    async def start(self) -> None:
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="onestep-infer")
        self.encode_pool = ThreadPoolExecutor(self.settings.encode_threads, thread_name_prefix="onestep-encode")
        self._loader = asyncio.get_running_loop().create_task(self._load_all(), name="onestep-load-models")

    async def shutdown(self) -> None:
        """Drain: queued work runs (no more batch delay), then the pools stop."""
        self.draining = True
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        batchers = [e.batcher for e in self.models.values() if e.batcher is not None]
        await asyncio.gather(*(b.close() for b in batchers), return_exceptions=True)
        for pool in (self.infer_pool, self.encode_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        for entry in self.models.values():
            if entry.backend is not None:
                entry.backend.close()
            self.metrics.model_ready.labels(entry.name).set(0)

    # ------------------------------------------------------------ queries

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        if not self.models:
            return False, f"no generator model dirs under {self.settings.models_dir}"
        for entry in self.models.values():
            if entry.status == "failed":
                return False, f"model {entry.name} failed to load: {entry.error}"
            if entry.status == "loading":
                return False, f"model {entry.name} is loading"
            if entry.batcher is not None and not entry.batcher.healthy:
                b = entry.batcher
                why = b.dead or ("a batch has run for too long" if b.stalled else "repeated inference failures")
                return False, f"model {entry.name}: {why}"
        return True, "ready"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    await state.start()
    try:
        yield
    finally:
        await state.shutdown()
