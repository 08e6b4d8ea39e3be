"""The service's long-lived state on ``app.state.service``: models, backends, batchers, thread pools, keys.

Startup returns at once (so /healthz answers while models load); models load and warm up in the background,
the default model first, and /readyz turns 200 only when every model is ready.

Models can be added, replaced and removed while serving (``ServiceState.reload``, from the admin endpoints or the
``models_watch_s`` poll): a new version is loaded, warmed and checked on the inference thread beside the old one,
then a new entry for the model (config, backend, batcher, version) replaces the old one in a single assignment,
so each request runs entirely on the version it looked up and was queued with; the old batcher then drains what it
had queued and its backend is closed. A version that fails to load is refused and the old one keeps serving.
A model's version is the first 12 hex digits of its weights' SHA-256, after the human ``version`` of its
config.json when it has one (``1.2.0+1cfd72839139``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI

from service.auth import load_admin_keys, load_api_keys
from service.backends import Backend, BackendError, create_backend
from service.batcher import Batcher, resolve_encode_overlap
from service.config import Settings
from service.metrics import Metrics
from training.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    ModelConfig,
    ModelKindError,
    file_sha256,
    read_model_config,
)

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
    version: str | None = None  # of what serves (or would, once loaded): weights hash, after config.version
    weights_sha256: str | None = None
    fingerprint: tuple[str, str] | None = None  # (config.json, weights) SHA-256 of what serves
    reload_error: str | None = None  # the last refused reload; the version above keeps serving

    @property
    def label_dim(self) -> int:
        return self.config.label_dim if self.config is not None else 0

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names) if self.config is not None else []

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.batcher is not None and self.batcher.healthy


def model_version(config: ModelConfig, weights_sha256: str) -> str:
    """``<config version>+<12 hex>`` or ``<12 hex>``: the version responses and /v1/models name."""
    short = weights_sha256[:12]
    return f"{config.version}+{short}" if config.version else short


@dataclass(frozen=True)
class ModelDir:
    """What a model dir holds now: its checked config and the hashes that identify the version."""

    config: ModelConfig
    weights_sha256: str
    config_sha256: str

    @property
    def fingerprint(self) -> tuple[str, str]:
        return (self.config_sha256, self.weights_sha256)

    @property
    def version(self) -> str:
        return model_version(self.config, self.weights_sha256)


def read_model_dir(path: Path) -> ModelDir:
    """Read and hash a generator's model dir (file I/O: call it off the event loop and the inference thread)."""
    config = read_model_config(path, kinds=("generator",))
    config_sha = hashlib.sha256((path / CONFIG_NAME).read_bytes()).hexdigest()
    weights = path / config.weights
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    sha = file_sha256(weights)
    if config.weights_sha256 is not None and sha != config.weights_sha256:
        raise CheckpointError(f"{weights}: SHA-256 does not match config.json (file truncated, modified or mid-copy)")
    return ModelDir(config, sha, config_sha)


def dir_signatures(root: Path) -> dict[str, tuple[tuple[str, int, int], ...]]:
    """Per model dir under ``root``: (name, size, mtime) of config.json and the .safetensors files (the watch)."""
    out: dict[str, tuple[tuple[str, int, int], ...]] = {}
    if not root.is_dir():
        return out
    for sub in root.iterdir():
        files = []
        try:
            st = (sub / CONFIG_NAME).stat()
            files.append((CONFIG_NAME, st.st_size, st.st_mtime_ns))
            for f in sub.glob("*.safetensors"):
                st = f.stat()
                files.append((f.name, st.st_size, st.st_mtime_ns))
        except OSError:  # no config.json (not a model dir), or a file removed while looking
            if not files:
                continue
        out[sub.name] = tuple(sorted(files))
    return out


@dataclass
class ReloadResult:
    """One model's outcome of a reload. ``action``: added, reloaded, unchanged, removed, failed or not_found."""

    model: str
    action: Literal["added", "reloaded", "unchanged", "removed", "failed", "not_found"]
    version: str | None = None  # what serves now
    previous_version: str | None = None
    error: str | None = None
    seconds: float = 0.0


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
        self.api_keys = load_api_keys(settings)  # KeyFileError names a bad file or line (never a key)
        self.admin_keys = load_admin_keys(settings, self.api_keys)
        self.models = discover_models(settings)
        self.default_model: str | None = next(iter(self.models), None)
        if self.default_model is not None and self.default_model != settings.default_model:
            log.warning("default model %r not found; using %r", settings.default_model, self.default_model)
        for entry in self.models.values():
            self.metrics.model_ready.labels(entry.name).set(0)
        self.infer_pool: ThreadPoolExecutor | None = None
        self.encode_pool: ThreadPoolExecutor | None = None
        self._loader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()  # one load or reload at a time (the first load holds it too)
        self.draining = False
        self._encode_children: dict[str, Any] = {}

    # ------------------------------------------------------------ loading

    def _build(self, path: Path, config: ModelConfig, backend_name: str) -> Backend:
        """On the inference thread: build, warm up, and check that one image comes out with the config's shape."""
        backend = create_backend(backend_name, path, config, self.settings)
        try:
            if self.settings.warmup:
                backend.warmup(self.settings.max_batch_size, should_stop=lambda: self.draining)
            out = backend.generate([0], [0] if config.label_dim else None)
            want = (1, config.img_resolution, config.img_resolution, config.img_channels)
            if not isinstance(out, np.ndarray) or out.shape != want or out.dtype != np.uint8:
                got = (getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__))
                raise BackendError(f"a test image came out as {got}, expected uint8 {want}")
        except BaseException:
            backend.close()
            raise
        return backend

    def _new_batcher(self, name: str, backend: Backend) -> Batcher:
        s = self.settings
        assert self.infer_pool is not None and self.encode_pool is not None
        batcher = Batcher(
            name,
            backend,
            self.infer_pool,
            self.metrics.for_model(name, backend.name),
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_images=s.max_queue_images,
            idle_dispatch=s.idle_dispatch,
            encode_overlap=resolve_encode_overlap(s.encode_overlap, backend),
            encode_pool=self.encode_pool,
            observe_encode=self._observe_encode,
        )
        batcher.stall_after_s = max(60.0, 2 * s.request_timeout_s)
        batcher.start()
        return batcher

    def _install(self, entry: ModelEntry, found: ModelDir, backend: Backend, batcher: Batcher) -> ModelEntry:
        """Make a loaded version the one that serves: a new entry replaces the model's entry in one assignment,
        so a request that looked up the old entry keeps a consistent view of it (config, version, batcher)."""
        if entry.version is not None and entry.version != found.version:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(entry.name, entry.version)
        new = ModelEntry(
            entry.name,
            entry.path,
            entry.backend_name,
            config=found.config,
            status="ready",
            backend=backend,
            batcher=batcher,
            version=found.version,
            weights_sha256=found.weights_sha256,
            fingerprint=found.fingerprint,
        )
        self.models[entry.name] = new
        self.metrics.model_ready.labels(entry.name).set(1)
        self.metrics.model_info.labels(entry.name, found.version).set(1)
        log.info(
            "model %s ready: version %s (%s, encoding %s)",
            entry.name,
            found.version,
            backend.name,
            "beside inference" if batcher.encode_overlap else "between batches",
        )
        return new

    async def _load_all(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._reload_lock:
            for entry in list(self.models.values()):
                if entry.status == "failed":
                    log.error("model %s: %s", entry.name, entry.error)
                    continue
                try:
                    found = await asyncio.to_thread(read_model_dir, entry.path)
                    # Built on the inference thread: thread-local runtime state (torch threads, CUDA) lives there.
                    backend = await loop.run_in_executor(
                        self.infer_pool, self._build, entry.path, found.config, entry.backend_name
                    )
                except Exception as e:
                    entry.status, entry.error = "failed", f"{type(e).__name__}: {e}"
                    log.exception("model %s: loading with backend %s failed", entry.name, entry.backend_name)
                    continue
                self._install(entry, found, backend, self._new_batcher(entry.name, backend))

    def _observe_encode(self, fmt: str, seconds: float) -> None:
        child = self._encode_children.get(fmt)
        if child is None:
            child = self._encode_children[fmt] = self.metrics.encode.labels(fmt)
        child.observe(seconds)

    # ------------------------------------------------------------ reloading

    async def reload(self, names: list[str] | None = None, force: bool = False) -> list[ReloadResult]:
        """Bring the named models (None: every model dir under models_dir and every served model) in line with
        their dirs: add new ones, load changed ones (``force``: unchanged ones too), remove those whose dir went.
        Dirs of other kinds (classifiers) are skipped. Reloads run one at a time, after the first load."""
        async with self._reload_lock:
            if names is None:
                on_disk = sorted(p.parent.name for p in Path(self.settings.models_dir).glob(f"*/{CONFIG_NAME}"))
                names = [*self.models, *(n for n in on_disk if n not in self.models)]
            results = []
            for name in names:
                result = await self._reload_one(name, force)
                if result is not None:
                    if result.action != "not_found":  # names that are no model never become metric labels
                        self.metrics.reloads.labels(name, result.action).inc()
                    results.append(result)
        return results

    async def _reload_one(self, name: str, force: bool) -> ReloadResult | None:
        t0 = time.perf_counter()
        entry = self.models.get(name)
        previous = entry.version if entry is not None and entry.batcher is not None else None
        path = Path(self.settings.models_dir) / name

        def result(action: Any, version: str | None = previous, error: str | None = None) -> ReloadResult:
            return ReloadResult(name, action, version, previous, error, round(time.perf_counter() - t0, 3))

        def refuse(error: str) -> ReloadResult:
            if entry is not None:
                if entry.batcher is None:  # not serving (its first load failed): this is its state now
                    entry.status, entry.error = "failed", error
                else:
                    entry.reload_error = error
            keeps = f"; version {previous} keeps serving" if previous else ""
            log.error("model %s: reload refused: %s%s", name, error, keeps)
            return result("failed", error=error)

        if "/" in name or name in ("", ".", "..") or not (path / CONFIG_NAME).is_file():
            if entry is None:
                return result("not_found", None, f"no model dir {name!r} under models_dir")
            await self._remove(entry)
            return result("removed", None)
        try:
            found = await asyncio.to_thread(read_model_dir, path)
        except ModelKindError as e:
            return None if entry is None else refuse(f"{e} (not a generator any more)")
        except Exception as e:
            return refuse(f"{type(e).__name__}: {e}")
        if entry is not None and entry.ready and entry.fingerprint == found.fingerprint and not force:
            return result("unchanged")
        backend_name = entry.backend_name if entry is not None else self.settings.backend_for(name)
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self.infer_pool, self._build, path, found.config, backend_name)
        except Exception as e:
            return refuse(f"{type(e).__name__}: {e}")
        if self.draining:  # shutdown began while it loaded: never swap in a batcher that nobody will close
            await self._close_backend(backend)
            return refuse("the service is shutting down")
        # The switch: one assignment in _install. A request that looked up the old entry runs on its batcher.
        added = entry is None
        old_backend, old_batcher = (None, None) if entry is None else (entry.backend, entry.batcher)
        self._install(entry or ModelEntry(name, path, backend_name), found, backend, self._new_batcher(name, backend))
        if added and (self.default_model is None or name == self.settings.default_model):
            self.default_model = name
        if old_batcher is not None:
            await old_batcher.close()  # runs what it had queued, at once; then its loop ends
            self.metrics.model_ready.labels(name).set(1)  # the old loop's exit reset the shared gauge
        if old_backend is not None:
            await self._close_backend(old_backend)
        return result("added" if added else "reloaded", found.version)

    async def _close_backend(self, backend: Backend) -> None:
        """Close a replaced or removed backend on the inference thread (here, once shutdown stopped that thread)."""
        try:
            await asyncio.get_running_loop().run_in_executor(self.infer_pool, backend.close)
        except RuntimeError:  # the pool is shut down
            backend.close()

    async def _remove(self, entry: ModelEntry) -> None:
        """Stop serving a model whose dir is gone: new requests get 404 at once, queued ones finish."""
        del self.models[entry.name]
        if self.default_model == entry.name:
            configured = self.settings.default_model
            self.default_model = configured if configured in self.models else next(iter(self.models), None)
        if entry.batcher is not None:
            await entry.batcher.close()
        if entry.backend is not None:
            await self._close_backend(entry.backend)
        for gauge, labels in (
            (self.metrics.model_ready, (entry.name,)),
            (self.metrics.model_info, (entry.name, entry.version)),
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        log.info("model %s removed (version %s)", entry.name, entry.version)

    async def _watch(self, interval: float, applied: dict[str, Any]) -> None:
        """Poll models_dir; a dir whose signature differs from the last one acted on, and has stayed the same
        for one more poll (its writer has finished), is reloaded (added, replaced or removed)."""
        root = Path(self.settings.models_dir)
        previous = dict(applied)
        while True:
            await asyncio.sleep(interval)
            try:
                current = await asyncio.to_thread(dir_signatures, root)
                settled = sorted(
                    n
                    for n in set(current) | set(applied)
                    if current.get(n) != applied.get(n) and current.get(n) == previous.get(n)
                )
                previous = current
                if not settled:
                    continue
                for r in await self.reload(settled):
                    log.info(
                        "watch: model %s %s (version %s)%s",
                        r.model,
                        r.action,
                        r.version,
                        f": {r.error}" if r.error else "",
                    )
                for n in settled:
                    if n in current:
                        applied[n] = current[n]
                    else:
                        applied.pop(n, None)
            except Exception:  # the watch must outlive a bad poll
                log.exception("watch of %s failed; trying again in %s s", root, interval)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="onestep-infer")
        self.encode_pool = ThreadPoolExecutor(self.settings.encode_threads, thread_name_prefix="onestep-encode")
        loop = asyncio.get_running_loop()
        if self.settings.models_watch_s > 0:  # the dirs as they are before loading: later changes get reloaded
            applied = await asyncio.to_thread(dir_signatures, Path(self.settings.models_dir))
            self._watcher = loop.create_task(self._watch(self.settings.models_watch_s, applied), name="onestep-watch")
        self._loader = loop.create_task(self._load_all(), name="onestep-load-models")

    async def shutdown(self) -> None:
        """Drain: queued work runs (no more batch delay), then the pools stop."""
        self.draining = True
        for task in (self._watcher, self._loader):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
