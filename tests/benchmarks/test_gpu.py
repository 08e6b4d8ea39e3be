"""benchmarks.gpu and scripts/gpu_check.sh on a CPU: the steps in dry-run mode, the report's structure, the parsing
of pytest's and benchmarks.service's output, and the targets judged from a report."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dry_run_steps_write_the_report(tmp_path: Path) -> None:
    report = tmp_path / "out" / "gpu_report.json"
    for step in ("env", "pytest", "raw", "service", "compile", "summary"):
        assert gpu.main([step, "--report", str(report), "--dry-run"]) == 0, step
    assert gpu.main(["mark", "training", "--report", str(report), "--status", "timed out after 150 s"]) == 0
    r = json.loads(report.read_text())
    assert r["schema"] == gpu.SCHEMA and r["dry_run"] is True
    assert r["steps"]["raw"]["status"] == "ok" and r["steps"]["training"]["status"] == "timed out after 150 s"
    assert all(r["steps"][s]["status"].startswith("skipped") for s in ("service", "pytest", "compile"))
    assert r["env"]["torch"] == torch.__version__ and "packages" in r["env"]
    assert "tests/service/test_torch_gpu.py" in r["pytest"]["files"]
    raw = r["raw"]
    (model,) = raw["models"]
    assert raw["models"][model]["bf16_parity"]["ok"] is True and raw["models"][model]["gflop_per_image"] > 0
    assert {p["mode"] for p in raw["points"]} == set(gpu.MODES)
    for p in raw["points"]:
        assert "error" not in p, p
        assert {"images_per_s", "latency_ms_p50", "e2e_images_per_s", "ms_per_batch", "batch"} <= set(p)
    names = [t["name"] for t in r["targets"]]
    assert len(names) == 7 and all({"value", "limit", "ok", "detail"} <= set(t) for t in r["targets"])
    assert all(t["ok"] is None for t in r["targets"])  # a dry run measures none of the targets' models


@pytest.mark.slow
def test_dry_run_training_step(tmp_path: Path) -> None:
    report = tmp_path / "gpu_report.json"
    assert gpu.main(["training", "--report", str(report), "--dry-run"]) == 0
    r = json.loads(report.read_text())
    for part in ("pretrain", "finetune"):
        section = r["training"][part]
        assert section["precision_resolved"] == "bf16" and section["images_per_s"] > 0 and section["steps"] >= 5
    assert r["training"]["data"].startswith("synthetic")
    target = next(t for t in r["targets"] if t["name"].startswith("pre-training"))
    assert target["value"] == pytest.approx(r["training"]["pretrain"]["images_per_s"] / gpu.CPU_PRETRAIN_IMAGES_PER_S)


def test_pytest_summary_and_gpu_test_files() -> None:
    out = "....\nSKIPPED [1] x.py:3: needs a CUDA GPU\n===== 3 passed, 1 skipped, 2 deselected in 4.20s =====\n"
    assert gpu.pytest_summary(out) == {"passed": 3, "skipped": 1, "deselected": 2}
    assert gpu.pytest_summary("5 passed in 1.0s") == {"passed": 5}
    failed = "DEBUG    torch:utils.py:1\nFAILED tests/a.py::test_x - AssertionError: 1 != 2\nERROR tests/b.py::test_y\n"
    assert gpu.pytest_failures(failed + "1 failed, 1 error in 2.0s") == [
        "FAILED tests/a.py::test_x - AssertionError: 1 != 2", "ERROR tests/b.py::test_y"
    ]  # fmt: skip
    assert gpu.pytest_failures(out) == []
    assert gpu.pytest_summary("no summary") == {}
    files = gpu.gpu_test_files()
    assert "tests/service/test_torch_gpu.py" in files and "tests/exporters/test_tensorrt.py" in files


def test_service_levels_get_their_gpu_utilization_window() -> None:
    lines = [
        (10.0, "spawned http://127.0.0.1:1234 (torch, max_batch_size=256)"),
        (16.0, "  dynamic c=1 img/req=1: 900.0 img/s, p50 1.0 ms, errors 0"),
        (22.0, "  dynamic c=32 img/req=64: 50000.0 img/s, p50 30.0 ms, errors 0"),
        (30.0, "  max_batch_size=1 c=32 img/req=1: 10.0 img/s, p50 1.0 ms, errors 0"),
    ]
    windows = gpu.level_windows(lines, duration=5.0)
    assert windows == {(1, 1): (11.0, 16.0), (32, 64): (17.0, 22.0)}
    sampler = gpu.UtilizationSampler()
    sampler.samples = [(12.0, 10.0), (14.0, 20.0), (18.0, 90.0), (21.0, 70.0), (25.0, 5.0)]
    bench = {
        "levels": [
            {
                "concurrency": c, "images_per_request": i, "requests": 10, "errors": 0, "throughput_images_s": ips,
                "latency_ms": {"p50": 1.0, "p99": 2.0}, "server_cpu_ms_per_image": 0.1, "server_cpu_share": 0.5,
                "loadgen_cpu_share": 0.1, "mean_batch_size": 64.0, "label": "",
            }
            for c, i, ips in ((1, 1, 900.0), (32, 64, 50000.0))
        ]
    }  # fmt: skip
    rows = gpu.service_levels(bench, windows, sampler.mean)
    assert [(r["concurrency"], r["gpu_util_pct"]) for r in rows] == [(1, 15.0), (32, 80.0)]
    assert sampler.mean(100.0, 200.0) is None


def test_targets_from_a_report() -> None:
    def point(model: str, mode: str, batch: int, ips: float, lat: float = 0.5, e2e: float | None = None) -> dict:
        e2e = ips if e2e is None else e2e
        return dict(model=model, mode=mode, batch=batch, images_per_s=ips, latency_ms_p50=lat, e2e_images_per_s=e2e)

    report = {
        "raw": {
            "points": [
                point("fmnist-d2o", "graphs-bf16", 1, 4000.0, lat=0.4),
                point("fmnist-d2o", "eager-bf16", 1, 1000.0),
                point("fmnist-d2o", "graphs-bf16", 64, 200000.0, e2e=100000.0),
                point("cifar10-ddpmpp (random weights)", "graphs-bf16", 1, 2000.0, lat=1.5),
                point("cifar10-ddpmpp (random weights)", "eager-bf16", 1, 1000.0),
                point("cifar10-ddpmpp (random weights)", "eager-bf16", 256, 30000.0),
                point("cifar10-ddpmpp (random weights)", "eager-fp32", 256, 15000.0),
            ]
        },
        "service": {
            "levels": [
                {
                    "images_per_request": 64,
                    "concurrency": 32,
                    "images_per_s": 60000.0,
                    "server_cpu_ms_per_image": 0.02,
                    "server_cpu_share": 0.06,
                    "gpu_util_pct": 40.0,
                },
                {
                    "images_per_request": 64,
                    "concurrency": 128,
                    "images_per_s": 75000.0,
                    "server_cpu_ms_per_image": 0.02,
                    "server_cpu_share": 0.07,
                    "gpu_util_pct": 50.0,
                },
                {"images_per_request": 1, "concurrency": 128, "images_per_s": 90000.0},
            ]
        },  # fmt: skip
        "training": {"pretrain": {"images_per_s": 100 * gpu.CPU_PRETRAIN_IMAGES_PER_S, "batch": 256}},
    }
    got = {t["name"]: (t["value"], t["ok"]) for t in gpu.evaluate_targets(report)}
    assert got["CUDA graphs / eager at batch 1, fmnist-d2o"] == (4.0, True)
    assert got["CUDA graphs / eager at batch 1, cifar10-ddpmpp"] == (2.0, False)
    assert got["batch-1 latency (ms), fmnist-d2o"] == (0.4, True)
    assert got["batch-1 latency (ms), cifar10-ddpmpp"] == (1.5, False)
    assert got["bf16 / fp32 at batch 256, cifar10-ddpmpp"] == (2.0, True)
    assert got["HTTP 64-image requests / raw batch 64, fmnist-d2o"] == (0.75, True)  # best 64-image level / e2e raw
    assert got["pre-training images/s, GPU / CPU"] == (pytest.approx(100.0), True)


def test_scripts_parse_and_name_every_step() -> None:
    for script in ("scripts/gpu_check.sh", "scripts/gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)
    text = (REPO / "scripts" / "gpu_check.sh").read_text()
    for name in gpu.STEPS:
        assert re.search(rf"^\s*step {name} \d+", text, re.MULTILINE), name
    assert "--no-index" in text and ".whl" in text and "$OUT" in text
    assert ".whl/" in (REPO / ".gitignore").read_text().splitlines()
