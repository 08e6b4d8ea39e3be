"""benchmarks.service: guards, counters, and short real runs against a live server (and spawned ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import loadgen
from benchmarks import service as bench
from benchmarks.loadgen import LevelResult
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


def test_bracketed_raw_is_the_mean_of_both_sides() -> None:
    """A host that slowed by half across a round: the ratios are judged against the mean of the raw timed before
    and after the levels; a size timed only after keeps its figure; the drift states the slowdown."""
    before, after = bench.RawResult("onnxruntime", 2), bench.RawResult("onnxruntime", 2)
    before.points[32] = bench.RawPoint(32, 10, 100.0, 100.0, 320.0, cpu_ms_per_image=6.0, runq_ms_per_batch=1.0)
    after.points[32] = bench.RawPoint(32, 5, 200.0, 200.0, 160.0, cpu_ms_per_image=12.0, runq_ms_per_batch=3.0)
    after.points[24] = bench.RawPoint(24, 5, 150.0, 150.0, 160.0, cpu_ms_per_image=12.0)
    mean = bench.bracket_raw(before, after)
    p = mean.points[32]
    assert (p.runs, p.wall_ms_per_batch_mean, p.wall_ms_per_batch_p50) == (15, 150.0, 150.0)
    assert p.images_per_s == pytest.approx(32 * 1000 / 150) and p.cpu_ms_per_image == 9.0 and p.runq_ms_per_batch == 2
    assert mean.points[24] == after.points[24]
    assert bench.raw_drift(before, after) == pytest.approx(0.5)
    assert bench.raw_drift(bench.RawResult("torch", 1), after) is None


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


def level(conc: int, ipr: int, img_s: float, cpu_ms: float, batches: dict[int, int], **kw) -> LevelResult:
    """A measured level as run_level reports it, with the figures the targets read."""
    images = int(img_s * 10)
    values = dict(
        concurrency=conc,
        images_per_request=ipr,
        duration_s=10.0,
        requests=images // ipr,
        images=images,
        errors=0,
        error_codes={},
        first_error=None,
        throughput_images_s=img_s,
        throughput_requests_s=img_s / ipr,
        latency_ms={"p50": 5.0, "p99": 8.0},
        server_queue_ms_p50=1.0,
        server_inference_ms_p50=2.0,
        batch_sizes=batches,
        mean_batch_size=None,
        server_cpu_s=cpu_ms * images / 1000,
        server_cpu_ms_per_image=cpu_ms,
        server_cpu_share=0.5,
        loadgen_cpu_s=1.0,
        loadgen_cpu_share=0.2,
    )
    values.update(kw)
    return LevelResult(**values)


def test_target_ratios_are_judged_undiscounted() -> None:
    """The serving-overhead targets from synthetic levels and raw points: c=32 against raw batch-32 (>= 0.80),
    CPU per image against raw at the same batches (<= 1.15), 16-image requests against raw (>= 0.95), c=1 p50 within
    raw + 2 ms; throughput ratios also carry the load generator's discount, which is printed but never judged."""
    raw = bench.RawResult("onnxruntime", 2)
    raw.points[1] = bench.RawPoint(1, 50, 2.0, 2.0, 500.0, cpu_ms_per_image=3.0)
    raw.points[32] = bench.RawPoint(32, 10, 40.0, 40.0, 800.0, cpu_ms_per_image=2.0)
    levels = [
        level(32, 1, 640.0, 2.2, {32: 6400}),  # only full batches, so the same-batches raw is batch 32's
        level(1, 1, 200.0, 3.5, {1: 2000}, latency_ms={"p50": 3.9, "p99": 7.0}),
        level(4, 16, 780.0, 2.1, {32: 7800}, loadgen_cpu_share=0.025),
        level(32, 1, 400.0, 3.2, {1: 4000}, label="max_batch_size=1"),
    ]
    targets = {t.name: t for t in bench.evaluate_targets(levels, raw, "onnxruntime", 32, (4, 16))}
    top = targets["throughput c=32 / raw b=32"]
    assert top.value == pytest.approx(640 / 800) and top.limit == 0.80 and top.ok is True and top.le is False
    assert top.discounted == pytest.approx(0.8 / 0.8)  # the load generator had 20% of the machine
    same = targets["throughput c=32 (raw)"]
    assert same.value == pytest.approx(0.8) and same.limit == 0.85 and same.ok is False
    cpu = targets["overhead c=32 1 img/req"]
    assert cpu.value == pytest.approx(1.1) and cpu.limit == 1.15 and cpu.ok is True and cpu.discounted is None
    big = targets["throughput c=4 16 img/req"]
    assert big.value == pytest.approx(780 / 800) and big.ok is True and big.discounted == pytest.approx(0.975 / 0.975)
    assert targets["overhead c=4 16 img/req"].value == pytest.approx(1.05)
    p50 = targets["latency c=1 p50"]
    assert p50.limit == pytest.approx(4.0) and p50.value == 3.9 and p50.ok is True
    assert targets["batching gain c=32 (onnxruntime)"].value == pytest.approx(1.6)
    assert targets["batching gain c=32 (onnxruntime)"].limit == pytest.approx(0.9 * 800 / 500)
    table = bench.format_targets(list(targets.values()))
    assert "discounted" in table.splitlines()[0] and "1" in table
    assert bench.discount(0.8, 0.2) == pytest.approx(1.0)
    # The median round keeps its own discounted value beside its value.
    same_round = list(targets.values())
    worse = [bench.Target(t.name, t.value and t.value * 0.9, t.limit, t.ok, "", t.le, None) for t in same_round]
    median = {t.name: t for t in bench.median_targets([same_round, worse, same_round])}
    assert median["throughput c=32 / raw b=32"].discounted == pytest.approx(1.0)


def test_null_model_and_format_gain_rows() -> None:
    levels = [
        level(32, 1, 2000.0, 0.35, {}, label=bench.NULL_LABEL),
        level(32, 1, 5000.0, 0.12, {}, label=bench.BARE_LABEL),
    ]
    cpu, per_core, versus = bench.evaluate_null_targets(levels, 32)
    assert cpu.value == pytest.approx(350.0) and cpu.limit == 400.0 and cpu.ok is True
    assert per_core.value == pytest.approx(1e6 / 350) and per_core.ok is True
    assert versus.value == pytest.approx(350 / 120) and versus.ok is None and "adds 230 us" in versus.detail
    missing = bench.evaluate_null_targets(levels[:1], 32)
    assert len(missing) == 2 and missing[0].ok is True
    table = bench.format_null_table(levels)
    assert "srv CPU us/req" in table and "350" in table and "2857" in table

    forms = [
        level(2, 64, 300.0, 2.0, {32: 3000}, label="png json", response_bytes_mean=64 * 900),
        level(2, 64, 360.0, 1.6, {32: 3600}, label="raw json", response_bytes_mean=64 * 1100),
        level(2, 64, 390.0, 1.5, {32: 3900}, label="raw octet-stream", response_bytes_mean=64 * 784),
    ]
    rows = bench.evaluate_format_gain(forms, (2, 64))
    assert [r.name for r in rows] == [
        "raw json / png json, 64 img/req (img/s)",
        "raw octet-stream / png json, 64 img/req (img/s)",
    ]
    assert rows[0].value == pytest.approx(1.2) and rows[1].value == pytest.approx(1.3) and rows[0].ok is None
    assert "784 vs 900 bytes/img" in rows[1].detail
    args = bench.build_parser().parse_args(["--url", "http://127.0.0.1:1", "--format-gain", "64"])
    assert bench.format_gain_level(args) == (2, 64)


def test_header_timing_reads_image_and_octet_stream_answers() -> None:
    headers = {
        "server-timing": "queue;dur=1.5, inference;dur=2.25, encode;dur=0.1, total;dur=4",
        "x-batch-size": "32",
        "x-shape": "64,28,28,1",
    }
    timing, count = loadgen.header_timing(headers, 64 * 784)
    assert timing == {"batch_size": 32, "queue_ms": 1.5, "inference_ms": 2.25, "encode_ms": 0.1, "total_ms": 4.0}
    assert count == 64
    assert loadgen.header_timing({"x-batch-size": "1"}, 900)[1] == 1  # an image: one per body


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
        "--format-gain",
        "4",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stdout and "latency c=1 p50" in proc.stdout
    assert "raw octet-stream / png json, 4 img/req" in proc.stdout
    assert "round 2 of 2" in proc.stdout and "targets over 2 rounds" in proc.stdout
    report = json.loads(out.read_text())
    assert report["server"]["model"] == "tiny-cond" and report["server"]["backend"] == "torch"
    assert report["server"]["cpu_source"].startswith(("proc:", "metrics:"))
    levels = report["levels"]
    forms = [(lv["label"], lv["fmt"], lv["accept"], lv["concurrency"]) for lv in levels[2:]]
    assert forms == [
        ("png json", "png", "application/json", 4),
        ("raw json", "raw", "application/json", 4),
        ("raw octet-stream", "raw", "application/octet-stream", 4),
    ]
    assert all(lv["errors"] == 0 and lv["images"] == 4 * lv["requests"] > 0 for lv in levels[2:])
    levels = levels[:2]
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
    # Bracketed by default: timed before the first level (powers of two up to the max batch) and after the last;
    # the judged figure at a size timed on both sides is their mean.
    before = {p["batch_size"]: p for p in report["raw_before"]["points"]}
    after = {p["batch_size"]: p for p in report["raw_after"]["points"]}
    judged = {p["batch_size"]: p for p in report["raw"]["points"]}
    assert set(before) <= set(after) == set(judged) and 1 in before
    assert judged[1]["wall_ms_per_batch_mean"] == pytest.approx(
        (before[1]["wall_ms_per_batch_mean"] + after[1]["wall_ms_per_batch_mean"]) / 2
    )
    assert report["raw_drift"] > 0 and all("raw_before" in r and "raw_after" in r for r in report["rounds"])
    assert "raw before the levels" in proc.stdout and "drift across the round" in proc.stdout
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["latency c=1 p50"]["value"] == pytest.approx(levels[0]["latency_ms"]["p50"])
    assert targets["latency c=1 p50"]["ok"] in (True, False)
    assert len(report["rounds"]) == 2 and report["rounds"][-1]["levels"][:2] == levels
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


@pytest.mark.slow
def test_null_model_against_bare_uvicorn(models_dir: Path, tmp_path: Path) -> None:
    """--null-model: the service with the null backend, then the bare uvicorn app answering with its captured
    response, at each concurrency; server CPU per request and requests/s per core for both."""
    out = tmp_path / "null.json"
    proc = run_bench(
        "--spawn",
        "--null-model",
        "--models-dir",
        str(models_dir),
        "--concurrency",
        "1,4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--json",
        str(out),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["server"]["backend"] == "null" and report["server"]["settings"]["ONESTEP_BACKEND"] == "null"
    shape = [(lv["label"], lv["concurrency"]) for lv in report["levels"]]
    assert shape == [(bench.NULL_LABEL, 1), (bench.NULL_LABEL, 4), (bench.BARE_LABEL, 1), (bench.BARE_LABEL, 4)]
    for lv in report["levels"]:
        assert lv["requests"] > 0 and lv["errors"] == 0 and lv["server_cpu_ms_per_image"] > 0
    names = [t["name"] for t in report["targets"]]
    assert names == [
        "null model c=4: server CPU us/request",
        "null model c=4: requests/s per server core",
        "null model / bare uvicorn c=4: CPU per request",
    ]
    assert "srv CPU us/req" in proc.stdout
    assert bench.main(["--url", "http://127.0.0.1:9", "--null-model"]) == 2  # it spawns its own servers
