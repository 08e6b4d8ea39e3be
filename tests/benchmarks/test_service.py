"""benchmarks.service: guards, counters, and short real runs against a live server (and spawned ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import service as bench
from tests.service.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.service", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1", "http://127.0.0.5", "http://[::1]:80"])
def test_loopback_allowed(url: str) -> None:
    bench.check_loopback(url)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "https://example.com", "http://0.0.0.0:8000"])
def test_remote_refused_unless_allowed(url: str) -> None:
    with pytest.raises(bench.BenchError, match="loopback"):
        bench.check_loopback(url)
    bench.check_loopback(url, allow_remote=True)


def test_cli_bounds() -> None:
    assert bench.main(["--url", "http://10.1.2.3:8000", "--duration", "1"]) == 2
    assert bench.main(["--url", "http://127.0.0.1:9", "--duration", "601"]) == 2
    assert bench.main(["--url", "http://127.0.0.1:9", "--concurrency", "0"]) == 2
    assert bench.main(["--url", "http://127.0.0.1:9", "--concurrency", "1,x"]) == 2
    assert bench.main(["--spawn"]) == 2  # needs --models-dir
    assert bench.main(["--url", "http://127.0.0.1:9", "--repeat", "0"]) == 2


def test_raw_mix_interpolates_between_measured_sizes() -> None:
    raw = bench.RawResult("torch", 2)
    for b, ms in ((1, 10.0), (4, 16.0)):
        raw.points[b] = bench.RawPoint(b, 5, ms, ms, b * 1000 / ms, cpu_ms_per_image=2 * ms / b)
    ips, cpu = raw.at_mix({4: 8})  # two batches of 4
    assert ips == pytest.approx(8 / 32.0 * 1000) and cpu == pytest.approx(8.0)
    ips, _ = raw.at_mix({2: 2})  # one batch of 2: 10 + (16 - 10) / 3 ms
    assert ips == pytest.approx(2 / 12.0 * 1000)
    assert bench.raw_sizes([], 32) == [1, 2, 4, 8, 16, 32]


def test_median_targets_judge_by_the_median_round() -> None:
    def rounds(*values: float) -> list[list[bench.Target]]:
        return [
            [bench._check("gain", v, 2.5, False, ""), bench._check("p99", 10 * v, 20.0 + v, True, "")] for v in values
        ]

    gain, p99 = bench.median_targets(rounds(2.2, 3.0, 2.6))
    assert gain.value == pytest.approx(2.6) and gain.ok is True and gain.le is False
    assert "median of 3 rounds; met in 2" in gain.detail
    # p99 margins: 22/22.2, 30/23, 26/22.6: the median round is the third
    assert p99.value == pytest.approx(26.0) and p99.limit == pytest.approx(22.6) and p99.ok is False
    assert "met in 1" in p99.detail
    gain, _ = bench.median_targets(rounds(2.2, 2.4, 3.0))
    assert gain.ok is False and gain.value == pytest.approx(2.4)
    gain, _ = bench.median_targets(rounds(2.4, 2.6))  # even count: the worse middle round
    assert gain.value == pytest.approx(2.4) and gain.ok is False
    missing = bench.median_targets([[bench._check("x", None, 1.0, True, "d")]] * 2)[0]
    assert missing.ok is None and missing.value is None


def test_bench_against_live_server(serve, models_dir: Path, tmp_path: Path) -> None:
    server: LiveServer = serve(max_batch_size=8, max_wait_ms=2, torch_threads=1)
    out = tmp_path / "bench.json"
    proc = run_bench(
        "--url",
        server.url,
        "--concurrency",
        "1,4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--models-dir",
        str(models_dir),
        "--threads",
        "1",
        "--raw-seconds",
        "0.2",
        "--repeat",
        "2",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stdout and "latency c=1 p50" in proc.stdout
    assert "round 2 of 2" in proc.stdout and "targets over 2 rounds" in proc.stdout
    report = json.loads(out.read_text())
    assert report["server"]["model"] == "tiny-cond" and report["server"]["backend"] == "torch"
    assert report["server"]["cpu_source"].startswith(("proc:", "metrics:"))
    levels = report["levels"]
    assert [(lv["concurrency"], lv["images_per_request"]) for lv in levels] == [(1, 1), (4, 1)]
    for lv in levels:
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["images"] == lv["requests"]
        assert lv["throughput_images_s"] > 0
        lat = lv["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert all(1 <= int(b) <= lv["concurrency"] for b in lv["batch_sizes"])
        assert sum(lv["batch_sizes"].values()) == lv["images"]
        assert lv["server_cpu_ms_per_image"] > 0
        assert 0 < lv["loadgen_cpu_share"] <= 1
    assert levels[0]["batch_sizes"] == {"1": levels[0]["images"]}
    assert levels[0]["mean_batch_size"] == pytest.approx(1.0)
    raw_sizes = [p["batch_size"] for p in report["raw"]["points"]]
    assert 1 in raw_sizes and 8 in raw_sizes
    assert all(p["images_per_s"] > 0 and p["cpu_ms_per_image"] > 0 for p in report["raw"]["points"])
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["latency c=1 p50"]["value"] == pytest.approx(levels[0]["latency_ms"]["p50"])
    assert targets["latency c=1 p50"]["ok"] in (True, False)
    assert len(report["rounds"]) == 2 and report["rounds"][-1]["levels"] == levels
    p50s = [r["levels"][0]["latency_ms"]["p50"] for r in report["rounds"]]
    median = {t["name"]: t for t in report["targets_median"]}["latency c=1 p50"]
    assert median["value"] in p50s and "median of 2 rounds" in median["detail"]


@pytest.mark.slow
def test_bench_spawns_servers_for_targets(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench(
        "--spawn",
        "--models-dir",
        str(models_dir),
        "--backend",
        "torch",
        "--threads",
        "1",
        "--targets",
        "--target-concurrency",
        "4",
        "--max-batch-size",
        "4",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--raw-seconds",
        "0.1",
        "--json",
        str(out),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    shape = [(lv["label"], lv["concurrency"], lv["images_per_request"]) for lv in report["levels"]]
    assert shape == [("", 4, 1), ("", 1, 1), ("", 1, 16), ("max_batch_size=1", 4, 1)]
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in report["levels"])
    assert report["levels"][-1]["batch_sizes"] == {"1": report["levels"][-1]["images"]}
    assert report["server"]["cpu_source"].startswith(("proc:", "metrics:"))
    settings = report["server"]["settings"]  # what the spawned server ran with, for the record
    assert settings["ONESTEP_BACKEND"] == "torch" and settings["ONESTEP_TORCH_THREADS"] == "1"
    assert "ONESTEP_PORT" not in settings and "ONESTEP_API_KEYS" not in settings
    targets = {t["name"]: t for t in report["targets"]}
    for name in (
        "overhead c=4 1 img/req",
        "overhead c=1 16 img/req",
        "batching gain c=4 (torch)",
        "throughput c=4 (raw)",
        "latency c=1 p99",
    ):
        assert targets[name]["value"] is not None and targets[name]["value"] > 0, targets[name]
    assert "raw batch-4/batch-1 gain" in targets["batching gain c=4 (torch)"]["detail"]
