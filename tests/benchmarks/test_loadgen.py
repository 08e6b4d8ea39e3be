"""benchmarks.loadgen: server counters and the closed-loop load against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import httpx
import pytest

from benchmarks import loadgen
from tests.service.conftest import LiveServer


def test_parse_metrics_sums_label_sets() -> None:
    text = (
        "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 12.5\n"
        'onestep_batch_size_sum{model="a"} 30.0\nonestep_batch_size_sum{model="b"} 2.0\n'
        'onestep_batch_size_count{model="a"} 3.0\nonestep_other 1\n'
    )
    assert loadgen.parse_metrics(text) == {
        "process_cpu_seconds_total": 12.5,
        "onestep_batch_size_sum": 32.0,
        "onestep_batch_size_count": 3.0,
    }


def test_proc_counters_find_this_process() -> None:
    assert loadgen.proc_cpu_seconds(os.getpid()) > 0
    wait = loadgen.proc_runqueue_wait_seconds(os.getpid())
    assert wait is not None and wait >= 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert loadgen.find_listener_pid(s.getsockname()[1]) == os.getpid()


@pytest.mark.parametrize("client_kind", ["raw", "httpx"])
def test_run_level_with_either_client(serve, client_kind: str) -> None:
    server: LiveServer = serve(max_batch_size=4, max_wait_ms=2, torch_threads=1)

    async def go() -> loadgen.LevelResult:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            probe = loadgen.ServerProbe(client, server.url, os.getpid())
            await probe.setup()
            return await loadgen.run_level(
                client,
                probe,
                concurrency=2,
                images_per_request=2,
                duration=0.5,
                warmup=0.1,
                model=None,
                fmt="jpeg",
                max_requests=5,
                client_kind=client_kind,
                url=server.url,
            )

    lv = asyncio.run(go())
    assert lv.errors == 0 and 1 <= lv.requests <= 5 and lv.images == 2 * lv.requests
    assert lv.server_cpu_ms_per_image is not None and lv.server_cpu_ms_per_image > 0
    assert all(1 <= b <= 4 for b in lv.batch_sizes)


def test_raw_client_reports_errors(serve) -> None:
    server: LiveServer = serve()

    async def go() -> tuple[int, bytes]:
        conn = loadgen.Http1Connection(server.url, 10)
        try:
            status, body = await conn.post("/generate", b'{"num_images": 0}')
            ok = await conn.post("/generate", b'{"seed": 1}')  # same keep-alive connection
            assert ok[0] == 200
            return status, body
        finally:
            await conn.aclose()

    status, body = asyncio.run(go())
    assert status == 422 and json.loads(body)["error"]["field"] == "num_images"
