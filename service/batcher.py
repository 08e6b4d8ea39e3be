"""Dynamic batching per model: a bounded FIFO queue counted in images, one inference thread.

A batch starts when it holds ``max_batch_size`` images or when its oldest request has waited ``max_wait_ms``
(Triton's and Ray Serve's rule, timed from the first arrival); a request that finds the batcher idle (nothing
queued or computing) runs at once, since no wait can help it. While a batch computes, new requests queue
up and form the next one. Requests larger than a batch are split across batches and reassembled. Finished
requests of a batch are encoded together in the encode pool (one hand-off per batch, not per request) while
the next batch computes. They are encoded on the inference thread, in the same hand-off as the compute, when
nothing is queued (no next batch to overlap with: this saves a thread hand-off per request at low load), when
``encode_overlap`` is off (for CPUs whose every core the runtime's intra-op threads already use) and for raw
pixels (a copy, not an encoding). Work of requests that were
cancelled (client gone, deadline passed) is dropped before compute and never resolves a future twice (the bugs
of Ray Serve #41057/#50046).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

import numpy as np

from service.backends.base import Backend, usable_cpus
from service.encode import encode_images
from service.metrics import ModelMetrics

log = logging.getLogger("service.batcher")


def resolve_encode_overlap(mode: str, backend: Backend) -> bool:
    """The ``encode_overlap`` setting for one backend.

    ``auto`` overlaps unless the runtime's threads fill the CPU: then an encoder thread preempts one of them
    mid-batch and the others wait for it. A runtime whose idle threads spin between runs (ONNX Runtime by default)
    still overlaps, since encoding in the gap between batches would only give them longer to spin.
    """
    if mode in ("on", "off"):
        return mode == "on"
    threads = backend.cpu_threads
    return threads is None or threads < usable_cpus() or backend.spins_between_runs


class QueueFull(Exception):
    """The queue has no room for the request's images."""


class NotAccepting(Exception):
    """The batcher is shutting down or its loop died."""


class JobCancelled(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InferenceFailed(Exception):
    pass


class EncodeFailed(Exception):
    pass


class Job:
    """One request's images, possibly spread over several batches."""

    __slots__ = (
        "n",
        "seeds",
        "labels",
        "enqueued",
        "deadline",
        "future",
        "offset",
        "done",
        "parts",
        "cancelled",
        "started",
        "inference_s",
        "batch_size",
        "eager",
        "fmt",
        "quality",
        "b64",
        "packed",
        "blobs",
        "encode_s",
        "error",
    )

    def __init__(
        self,
        seeds: list[int],
        labels: list[int] | None,
        deadline: float,
        future: asyncio.Future,
        fmt: str = "png",
        quality: int = 90,
        b64: bool = True,
        packed: bool = False,
    ):
        self.n = len(seeds)
        self.seeds = seeds
        self.labels = labels
        self.enqueued = time.perf_counter()
        self.deadline = deadline
        self.future = future
        self.offset = 0  # images handed to batches so far
        self.done = 0  # images computed so far
        self.parts: list[np.ndarray] = []
        self.cancelled: str | None = None
        self.started: float | None = None
        self.inference_s = 0.0
        self.batch_size = 0
        self.eager = False
        self.fmt = fmt
        self.quality = quality
        self.b64 = b64  # base64 for JSON bodies
        self.packed = packed  # one blob of every image's raw pixels (application/octet-stream bodies)
        self.blobs: list[bytes] = []
        self.encode_s = 0.0
        self.error: Exception | None = None

    def images(self) -> list[np.ndarray]:
        """HWC uint8 views, in request order."""
        return [img for part in self.parts for img in part]

    def encode(self) -> list[bytes]:
        """The request's images as its response needs them (see ``encode_images``; ``packed``: one raw blob)."""
        if self.packed:
            return [b"".join(part.tobytes() for part in self.parts)]
        return encode_images(self.images(), self.fmt, self.quality, self.b64)


class Batcher:
    def __init__(
        self,
        model: str,
        backend: Backend,
        executor: Executor,
        metrics: ModelMetrics,
        *,
        encode_pool: Executor,
        observe_encode: Callable[[str, float], None] | None = None,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_images: int,
        idle_dispatch: bool = True,
        encode_overlap: bool = True,
    ):
        self.model = model
        self.backend = backend
        self.executor = executor
        self.metrics = metrics
        self.encode_pool = encode_pool
        self.observe_encode = observe_encode
        # Never form a batch larger than the backend runs or than its largest preferred size.
        limits = [max_batch_size, backend.max_supported_batch, max(backend.preferred_batch_sizes or [max_batch_size])]
        self.max_batch_size = min(x for x in limits if x is not None)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.idle_dispatch = idle_dispatch
        self.encode_overlap = encode_overlap
        self._computing = False
        self._compute_started = 0.0
        #: A batch running longer than this marks the batcher unhealthy (a hung GPU or runtime).
        self.stall_after_s = 60.0
        self._queue: deque[Job] = deque()
        self.queued_images = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.consecutive_failures = 0
        self.dead: str | None = None
        # The queue-depth gauge reads the count when scraped (no lock taken per request); a weak reference, so that
        # a replaced or removed model's batcher is not kept alive by its gauge (it then reads 0).
        ref = weakref.ref(self)
        metrics.queue_depth.set_function(lambda: getattr(ref(), "queued_images", 0))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model}")
        self._task.add_done_callback(self._on_loop_exit)

    def _on_loop_exit(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            if not self._closing:
                self.dead = "batch loop stopped"
        else:
            self.dead = f"batch loop died: {task.exception()!r}"
            log.error("%s: %s", self.model, self.dead, exc_info=task.exception())
        for job in list(self._queue):
            self.cancel(job, "not_ready")
        self.metrics.ready.set(0)

    @property
    def healthy(self) -> bool:
        return self.dead is None and self.consecutive_failures < 3 and not self.stalled

    @property
    def stalled(self) -> bool:
        return self._computing and time.perf_counter() - self._compute_started > self.stall_after_s

    async def close(self) -> None:
        """Stop accepting, run what is queued without waiting for more, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    # ------------------------------------------------------------ requests

    def submit(
        self,
        seeds: list[int],
        labels: list[int] | None,
        deadline: float,
        fmt: str = "png",
        quality: int = 90,
        b64: bool = True,
        packed: bool = False,
    ) -> Job:
        """Queue a request; its future resolves once its images are computed and encoded into ``job.blobs``."""
        if self._closing or self.dead is not None:
            raise NotAccepting(self.dead or "shutting down")
        n = len(seeds)
        if self.queued_images + n > self.max_queue_images:
            raise QueueFull(f"queue holds {self.queued_images} of {self.max_queue_images} images")
        job = Job(seeds, labels, deadline, asyncio.get_running_loop().create_future(), fmt, quality, b64, packed)
        # A request that finds the batcher idle runs at once: waiting could only add latency (Triton's default).
        job.eager = self.idle_dispatch and not self._computing and self.queued_images == 0
        self._queue.append(job)
        self.queued_images += n
        self._wakeup.set()
        return job

    def cancel(self, job: Job, reason: str) -> None:
        """Drop a job's queued images at once (frees its queue slots) and fail its future."""
        if job.cancelled is not None:
            return
        job.cancelled = reason
        left = job.n - job.offset
        if left:
            job.offset = job.n
            self.queued_images -= left
        if not job.future.done():
            job.future.set_exception(JobCancelled(reason))
            job.future.exception()  # mark retrieved: nobody may be awaiting it any more

    # ------------------------------------------------------------ the loop

    def _head(self) -> Job | None:
        q = self._queue
        while q and (q[0].cancelled is not None or q[0].offset >= q[0].n):
            q.popleft()
        return q[0] if q else None

    def _take(self, now: float) -> list[tuple[Job, int, int]]:
        room = self.max_batch_size
        batch: list[tuple[Job, int, int]] = []
        q = self._queue
        while room and q:
            job = q[0]
            if job.cancelled is not None or job.offset >= job.n:
                q.popleft()
                continue
            if now > job.deadline:
                self.cancel(job, "deadline")
                q.popleft()
                continue
            take = min(room, job.n - job.offset)
            batch.append((job, job.offset, job.offset + take))
            job.offset += take
            room -= take
            if job.started is None:
                job.started = now
                self.metrics.queue_wait.observe(now - job.enqueued)
            if job.offset >= job.n:
                q.popleft()
        self.queued_images -= self.max_batch_size - room
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            head = self._head()
            if head is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for a full batch, at most max_wait after the oldest request arrived.
            while self.queued_images < self.max_batch_size and not self._closing and not head.eager:
                delay = head.enqueued + self.max_wait - time.perf_counter()
                if delay <= 0:
                    break
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    break
                head = self._head()
                if head is None:
                    break
            batch = self._take(time.perf_counter())
            if batch:
                await self._compute(loop, batch)

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Job, int, int]]) -> None:
        seeds: list[int] = []
        labels: list[int] | None = [] if batch[0][0].labels is not None else None
        for job, a, b in batch:
            seeds.extend(job.seeds[a:b])
            if labels is not None:
                labels.extend(job.labels[a:b])  # type: ignore[index]
        size = len(seeds)
        self._computing = True
        self._compute_started = time.perf_counter()
        try:
            dt, done, later = await loop.run_in_executor(self.executor, self._run, seeds, labels, batch)
        except Exception as e:  # a failed batch fails its requests, not the service
            self.consecutive_failures += 1
            log.exception("%s: batch of %d failed", self.model, size)
            for job, _, _ in batch:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed(f"inference failed: {type(e).__name__}: {e}"))
                    job.future.exception()
            return
        finally:
            self._computing = False
        self._compute_started = 0.0
        self.consecutive_failures = 0
        m = self.metrics
        m.batch_inference.observe(dt)
        m.batch_size.observe(size)
        m.images_generated.inc(size)
        if done:
            _resolve(done)
        if later:
            # The encode pool, not awaited: the next batch computes meanwhile.
            encoded = loop.run_in_executor(self.encode_pool, self._encode, later)
            encoded.add_done_callback(partial(_resolve, later))

    def _run(
        self, seeds: list[int], labels: list[int] | None, batch: list[tuple[Job, int, int]]
    ) -> tuple[float, list[Job], list[Job]]:
        """On the inference thread: compute a batch, hand each job its images, and encode the finished jobs that
        need not wait for the encode pool. Returns (compute seconds, jobs finished and encoded, finished jobs left to
        the encode pool)."""
        t0 = time.perf_counter()
        out = self.backend.generate(seeds, labels)
        dt = time.perf_counter() - t0
        size = len(seeds)
        pos = 0
        finished: list[Job] = []
        for job, a, b in batch:
            k = b - a
            if job.cancelled is None:
                job.parts.append(out[pos : pos + k])
                job.inference_s += dt
                job.batch_size = max(job.batch_size, size)
                job.done += k
                if job.done >= job.n:
                    finished.append(job)
            pos += k
        # Nothing queued (or no overlap wanted): no next batch to overlap with, so encode here and save a hand-off.
        if not self.encode_overlap or self.queued_images == 0:
            self._encode(finished)
            return dt, finished, []
        now = [job for job in finished if job.fmt == "raw"]  # a copy of the pixels: not worth a hand-off
        if now:
            self._encode(now)
        return dt, now, [job for job in finished if job.fmt != "raw"]

    def _encode(self, jobs: list[Job]) -> None:
        """Runs in the encode pool, or on the inference thread (see ``_run``)."""
        for job in jobs:
            if job.cancelled is not None:
                continue
            t0 = time.perf_counter()
            try:
                job.blobs = job.encode()
            except Exception as e:
                job.error = e
                continue
            job.encode_s = time.perf_counter() - t0
            if self.observe_encode is not None:
                self.observe_encode(job.fmt, job.encode_s)


def _resolve(jobs: list[Job], encoded: asyncio.Future | None = None) -> None:
    """Resolve finished jobs' futures (on the event loop): with their blobs, or with the encoding's failure."""
    failure = None
    if encoded is not None:
        failure = encoded.exception() if not encoded.cancelled() else RuntimeError("encoding cancelled")
    for job in jobs:
        if job.future.done():
            continue
        error = failure or job.error
        if error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(EncodeFailed(f"encoding failed: {type(error).__name__}: {error}"))
