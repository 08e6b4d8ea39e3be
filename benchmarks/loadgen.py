"""Closed-loop HTTP load on ``POST /generate`` and the server-side counters read around it (for benchmarks.service).

Each worker keeps one connection and sends its next request as soon as the last one answers. The server's CPU
seconds come from ``process_cpu_seconds_total`` in /metrics when exported, else from /proc of its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked (bad arguments, unreachable or failing server)."""


# ---------------------------------------------------------------- CPU counters


def proc_cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime of ``pid`` and (by default) all of its live descendants, from /proc."""
    pids = [pid, *(_descendants(pid) if with_children else [])]
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return total


def proc_runqueue_wait_seconds(pid: int) -> float | None:
    """Time the threads of ``pid`` (and descendants) spent runnable but waiting for a CPU (/proc/*/schedstat).

    On a shared machine this is the latency other processes add; it is not the server's own cost."""
    total, found = 0.0, False
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[1]) / 1e9
                    found = True
    return total if found else None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def find_listener_pid(port: int) -> int | None:
    """The pid of the process listening on a local TCP port (Linux /proc; only our own processes are visible)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value summed over label sets} for the few series the bench reads."""
    wanted = ("process_cpu_seconds_total", "onestep_batch_size_sum", "onestep_batch_size_count")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            with contextlib.suppress(ValueError, IndexError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class ServerProbe:
    """Reads the server's CPU seconds and batch counters: /metrics when it exports process_cpu_seconds_total,
    else /proc of the server process (known when spawned, else found by its listening port)."""

    def __init__(self, client: httpx.AsyncClient, url: str, pid: int | None):
        self.client = client
        self.pid = pid
        port = urlsplit(url).port or 80
        self.cpu_source = "unavailable"
        self._port = port

    async def setup(self) -> None:
        m = await self._metrics()
        if self.pid is None:
            self.pid = find_listener_pid(self._port)
        if "process_cpu_seconds_total" in m:
            self.cpu_source = "metrics:process_cpu_seconds_total"
        elif self.pid is not None and Path(f"/proc/{self.pid}/stat").exists():
            self.cpu_source = f"proc:{self.pid}"

    async def _metrics(self) -> dict[str, float]:
        try:
            r = await self.client.get("/metrics")
            return parse_metrics(r.text) if r.status_code == 200 else {}
        except httpx.HTTPError:
            return {}

    async def snapshot(self) -> dict[str, float | None]:
        m = await self._metrics()
        cpu: float | None = None
        if self.cpu_source.startswith("metrics"):
            cpu = m.get("process_cpu_seconds_total")
        elif self.cpu_source.startswith("proc") and self.pid is not None:
            cpu = proc_cpu_seconds(self.pid)
        batches, batch_images = m.get("onestep_batch_size_count"), m.get("onestep_batch_size_sum")
        runq = proc_runqueue_wait_seconds(self.pid) if self.pid is not None else None
        return {"cpu": cpu, "batches": batches, "batch_images": batch_images, "runq": runq}


# ---------------------------------------------------------------- load levels


class Http1Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one per closed-loop worker.

    The load generator shares the machine with the server, so its CPU per request matters: measured here,
    httpx's AsyncClient spent 2.5-4.7 ms of CPU per request (concurrency 1-32) where this spends ~0.15 ms.
    """

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise BenchError(f"--url {url!r}: the raw client speaks plain http only (use --client httpx)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self._host_header = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.headers: dict[str, str] = {}  # of the last response, names in lower case

    async def post(self, path: str, body: bytes, accept: str = "application/json") -> tuple[int, bytes]:
        return await asyncio.wait_for(self._post(path, body, accept), self.timeout)

    async def _post(self, path: str, body: bytes, accept: str) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host_header}\r\nContent-Type: application/json\r\n"
            f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("ascii") + body)
        try:
            raw_head = await self._reader.readuntil(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                content = await self._reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                content = await self._read_chunked()
            else:
                content = await self._reader.read()
                headers["connection"] = "close"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            await self.aclose()
            raise ConnectionError(f"bad HTTP response: {e}") from e
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        self.headers = headers
        return status, content

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        out = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self._reader.readexactly(size + 2)
            del out[-2:]

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class HttpxPoster:
    """The same interface over a shared ``httpx.AsyncClient`` (``--client httpx``)."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.headers: dict[str, str] = {}

    async def post(self, path: str, body: bytes, accept: str = "application/json") -> tuple[int, bytes]:
        r = await self.client.post(path, content=body, headers={"content-type": "application/json", "accept": accept})
        self.headers = {k.lower(): v for k, v in r.headers.items()}
        return r.status_code, r.content

    async def aclose(self) -> None:
        pass


@dataclass
class LevelResult:
    concurrency: int
    images_per_request: int
    duration_s: float
    requests: int
    images: int
    errors: int
    error_codes: dict[str, int]
    first_error: str | None
    throughput_images_s: float
    throughput_requests_s: float
    latency_ms: dict[str, float]
    server_queue_ms_p50: float | None
    server_inference_ms_p50: float | None
    batch_sizes: dict[int, int]  # batch size -> images that ran in batches of that size (from response timing)
    mean_batch_size: float | None  # images per executed batch, from the /metrics batch-size histogram
    server_cpu_s: float | None
    server_cpu_ms_per_image: float | None
    server_cpu_share: float | None  # of the whole machine (all cores)
    loadgen_cpu_s: float
    loadgen_cpu_share: float
    loadavg_1m: float | None = None  # the machine's load average at the end of the level (others' work too)
    server_runq_wait_ms_per_request: float | None = None  # server threads runnable but waiting for a CPU
    label: str = ""
    fmt: str = "png"  # the request's format
    accept: str = "application/json"  # the response's form the requests asked for
    response_bytes_mean: float | None = None  # body bytes per successful response


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


async def run_level(
    client: httpx.AsyncClient,
    probe: ServerProbe,
    *,
    concurrency: int,
    images_per_request: int,
    duration: float,
    warmup: float,
    model: str | None,
    fmt: str,
    max_requests: int,
    seed_base: int = 0,
    client_kind: str = "raw",
    url: str = "",
    accept: str = "application/json",
) -> LevelResult:
    """Closed loop: ``concurrency`` workers, each sending its next request as soon as the last one answers.

    ``accept`` picks the response: JSON (timing from its body), or ``image/...`` / ``application/octet-stream``
    (the body is the image or the pixels; timing and batch size from the Server-Timing and X-Batch-Size headers)."""
    latencies: list[float] = []
    queue_ms: list[float] = []
    inference_ms: list[float] = []
    batch_sizes: Counter[int] = Counter()
    error_codes: Counter[str] = Counter()
    first_error: list[str] = []
    body_bytes = 0
    counter = iter(range(seed_base, seed_base + 10**12, images_per_request))
    base = {"num_images": images_per_request, "format": fmt, "class_labels": None}
    if model:
        base["model"] = model
    json_out = accept.split(";", 1)[0].strip().lower() in ("application/json", "*/*", "")
    start = time.perf_counter() + warmup
    end = start + duration
    completed = 0
    stop = asyncio.Event()

    async def worker() -> None:
        nonlocal completed, body_bytes
        poster = Http1Connection(url, 120.0) if client_kind == "raw" else HttpxPoster(client)
        try:
            while not stop.is_set() and time.perf_counter() < end:
                body = json.dumps({**base, "seed": next(counter)}).encode()
                t0 = time.perf_counter()
                code: str
                timing: dict[str, Any] | None = None
                try:
                    status, content = await poster.post("/generate", body, accept)
                    code = str(status)
                    if status == 200 and json_out:
                        payload = json.loads(content)
                        timing = payload["timing"]
                        if len(payload["images"]) != images_per_request:
                            code = "wrong_image_count"
                    elif status == 200:
                        timing, count = header_timing(poster.headers, len(content))
                        if count != images_per_request:
                            code = "wrong_image_count"
                    elif not first_error:
                        first_error.append(f"HTTP {status}: {content[:300].decode(errors='replace')}")
                except (httpx.HTTPError, OSError, TimeoutError) as e:
                    code = type(e).__name__
                    if not first_error:
                        first_error.append(f"{code}: {e}")
                t1 = time.perf_counter()
                if not start <= t1 <= end or stop.is_set():  # outside the measured window
                    continue
                if code != "200" or timing is None:
                    error_codes[code] += 1
                    continue
                latencies.append((t1 - t0) * 1000.0)
                body_bytes += len(content)
                queue_ms.append(float(timing["queue_ms"]))
                inference_ms.append(float(timing["inference_ms"]))
                batch_sizes[int(timing["batch_size"])] += images_per_request
                completed += 1
                if completed >= max_requests:
                    stop.set()
        finally:
            await poster.aclose()

    async def sampler() -> tuple[dict, dict, float, float, float, float]:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        s0, c0, w0 = await probe.snapshot(), time.process_time(), time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, end - time.perf_counter()))
        s1, c1, w1 = await probe.snapshot(), time.process_time(), time.perf_counter()
        return s0, s1, c1 - c0, w1 - w0, w0, w1

    sample_task = asyncio.create_task(sampler())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    s0, s1, loadgen_cpu, wall, _, _ = await sample_task
    ncpu = os.cpu_count() or 1
    images = completed * images_per_request
    server_cpu = None if s0["cpu"] is None or s1["cpu"] is None else s1["cpu"] - s0["cpu"]
    mean_batch = None
    if None not in (s0["batches"], s1["batches"]) and s1["batches"] > s0["batches"]:
        mean_batch = (s1["batch_images"] - s0["batch_images"]) / (s1["batches"] - s0["batches"])
    errors = sum(error_codes.values())
    return LevelResult(
        concurrency=concurrency,
        images_per_request=images_per_request,
        duration_s=wall,
        requests=completed,
        images=images,
        errors=errors,
        error_codes=dict(error_codes),
        first_error=first_error[0] if first_error else None,
        throughput_images_s=images / wall if wall > 0 else 0.0,
        throughput_requests_s=completed / wall if wall > 0 else 0.0,
        latency_ms=_percentiles(latencies),
        server_queue_ms_p50=float(np.median(queue_ms)) if queue_ms else None,
        server_inference_ms_p50=float(np.median(inference_ms)) if inference_ms else None,
        batch_sizes=dict(sorted(batch_sizes.items())),
        mean_batch_size=mean_batch,
        server_cpu_s=server_cpu,
        server_cpu_ms_per_image=(server_cpu * 1000.0 / images) if server_cpu is not None and images else None,
        server_cpu_share=(server_cpu / (wall * ncpu)) if server_cpu is not None and wall > 0 else None,
        loadgen_cpu_s=loadgen_cpu,
        loadgen_cpu_share=loadgen_cpu / (wall * ncpu) if wall > 0 else 0.0,
        loadavg_1m=_loadavg(),
        server_runq_wait_ms_per_request=(
            (s1["runq"] - s0["runq"]) * 1000.0 / completed
            if completed and s0.get("runq") is not None and s1.get("runq") is not None
            else None
        ),
        fmt=fmt,
        accept=accept,
        response_bytes_mean=body_bytes / completed if completed else None,
    )


def header_timing(headers: dict[str, str], body_len: int) -> tuple[dict[str, Any], int]:
    """Timing (as the JSON body's ``timing``) and image count of an image or octet-stream response, from its
    Server-Timing, X-Batch-Size and X-Shape headers."""
    timing: dict[str, Any] = {"batch_size": int(headers.get("x-batch-size", "0"))}
    for part in headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            timing[f"{name}_ms"] = float(dur)
    shape = headers.get("x-shape")
    count = int(shape.split(",", 1)[0]) if shape else (1 if body_len else 0)
    return timing, count


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
