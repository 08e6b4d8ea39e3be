"""Batcher internals on a real torch backend: FIFO packing and splitting, cancellation, deadlines, loop death."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.backends import create_backend
from service.batcher import Batcher, JobCancelled, NotAccepting, QueueFull
from service.config import Settings
from service.metrics import Metrics
from tests.service.conftest import COND
from training.checkpoint import read_model_config


@pytest.fixture(scope="module")
def backend(models_dir: Path):
    return create_backend("torch", models_dir / COND, read_model_config(models_dir / COND), Settings(torch_threads=1))


def make(backend, pool: ThreadPoolExecutor, **kw) -> Batcher:
    kw = {"max_batch_size": 4, "max_wait_ms": 10_000, "max_queue_images": 10, "idle_dispatch": False, **kw}
    return Batcher(COND, backend, pool, Metrics().for_model(COND, "torch"), encode_pool=pool, **kw)


def test_fifo_packing_and_splitting(backend) -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = make(backend, pool)
            far = time.perf_counter() + 60
            jobs = [b.submit(list(range(n)), [0] * n, far) for n in (3, 6, 1)]
            assert b.queued_images == 10
            with pytest.raises(QueueFull):
                b.submit([1], [0], far)
            now = time.perf_counter()
            batches = [[(id(j), a, c) for j, a, c in b._take(now)] for _ in range(3)]
            a, m, z = (id(j) for j in jobs)
            assert batches == [[(a, 0, 3), (m, 0, 1)], [(m, 1, 5)], [(m, 5, 6), (z, 0, 1)]]
            assert b.queued_images == 0 and b._take(now) == []

    asyncio.run(go())


def test_cancel_frees_slots_and_never_resolves_twice(backend) -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = make(backend, pool)
            b.start()
            far = time.perf_counter() + 60
            gone = b.submit([1, 2, 3], [0, 0, 0], far)
            stay = b.submit([4], [1], far)
            b.cancel(gone, "client_disconnected")
            b.cancel(gone, "client_disconnected")  # idempotent
            assert b.queued_images == 1
            with pytest.raises(JobCancelled):
                await gone.future
            expired = b.submit([5], [0], time.perf_counter() - 1)  # deadline already passed
            await b.close()  # drains without waiting max_wait
            await stay.future
            assert len(stay.blobs) == 1 and stay.batch_size == 1  # the cancelled and expired images never ran
            assert expired.cancelled == "deadline"
            with pytest.raises(NotAccepting):
                b.submit([6], [0], far)

    asyncio.run(go())


def test_loop_death_marks_unhealthy_and_fails_queued_work(backend) -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = make(backend, pool)
            job = b.submit([1], [0], time.perf_counter() + 60)
            b._take = None  # a bug in the loop: calling it raises TypeError
            b.max_wait = 0
            b.start()
            with pytest.raises(JobCancelled):
                await asyncio.wait_for(job.future, 10)
            assert not b.healthy and "TypeError" in (b.dead or "")

    asyncio.run(go())


def test_a_hung_batch_marks_the_batcher_unhealthy(backend) -> None:
    release = threading.Event()
    original = backend.generate

    def hanging_generate(seeds, labels):  # fault injection: a runtime that stops answering for a while
        release.wait(30)
        return original(seeds, labels)

    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = make(backend, pool, idle_dispatch=True)
            b.stall_after_s = 0.1
            b.backend = copy.copy(backend)
            b.backend.generate = hanging_generate
            b.start()
            job = b.submit([1], [0], time.perf_counter() + 60)
            await asyncio.sleep(0.3)
            assert b.stalled and not b.healthy
            release.set()
            await asyncio.wait_for(job.future, 30)
            assert b.healthy
            await b.close()

    asyncio.run(go())


@pytest.mark.parametrize("overlap", [True, False])
def test_encode_overlap_chooses_the_thread_that_encodes(backend, overlap: bool) -> None:
    """Overlap on: the encode pool encodes while the next batch computes; off (or nothing queued): the inference
    thread does, in the same hand-off as the compute."""
    threads: list[str] = []
    starts: list[str] = []
    original_generate = backend.generate

    def generate(seeds, labels):
        starts.append(f"compute {len(seeds)}")
        return original_generate(seeds, labels)

    async def go() -> None:
        with (
            ThreadPoolExecutor(1, thread_name_prefix="infer") as infer,
            ThreadPoolExecutor(1, thread_name_prefix="encode") as enc,
        ):
            b = Batcher(
                COND,
                copy.copy(backend),
                infer,
                Metrics().for_model(COND, "torch"),
                encode_pool=enc,
                max_batch_size=2,
                max_wait_ms=10_000,
                max_queue_images=10,
                idle_dispatch=False,
                encode_overlap=overlap,
            )
            b.backend.generate = generate
            encode = b._encode

            def traced_encode(jobs):
                threads.append(threading.current_thread().name)
                starts.append(f"encode {sum(j.n for j in jobs)}")
                encode(jobs)

            b._encode = traced_encode
            far = time.perf_counter() + 60
            jobs = [b.submit([s, s + 1], [0, 1], far) for s in (0, 10, 20)]
            b.start()
            await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 60)
            await b.close()
            for j in jobs:
                assert len(j.blobs) == 2 and all(blob.startswith(b"iVBOR") for blob in j.blobs)  # base64 PNG

    asyncio.run(go())
    # The last batch finds nothing queued, so nothing to overlap with: the inference thread encodes it at once.
    expected = ["encode", "encode", "infer"] if overlap else ["infer"] * 3
    assert [t.split("_")[0] for t in threads] == expected, threads
    if not overlap:  # strictly alternating: each batch is encoded before the next one computes
        assert starts == ["compute 2", "encode 2"] * 3
