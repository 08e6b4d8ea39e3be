"""benchmarks/exporters.py: timing plumbing and the report, on the tiny model with very short timings."""

from __future__ import annotations

from pathlib import Path

from benchmarks.exporters import CONFIG_DATA, format_table, make_random_model, run_bench
from training.checkpoint import load_model, read_model_config


def test_random_model_matches_config_data(tmp_path: Path):
    model_dir = make_random_model("fmnist", tmp_path / "fm")
    config = read_model_config(model_dir)
    assert (config.img_resolution, config.img_channels, config.label_dim) == CONFIG_DATA["fmnist"]
    assert load_model(model_dir).img_shape == (1, 28, 28)


def test_run_bench_reports_every_backend_and_ratio(tiny_dir: Path, tiny_onnx: Path):
    results = run_bench(tiny_dir, tiny_onnx, batches=(1, 4), threads=(1,), seconds=0.05, rounds=2)
    keys = {(r.backend, r.setting, r.batch) for r in results}
    assert ("torch eager", "threads=1", 1) in keys
    assert ("onnxruntime", "threads=1,sequential", 4) in keys
    assert ("onnxruntime", "threads=1,parallel", 1) in keys
    for r in results:
        assert r.latency_ms > 0 and r.p90_ms >= r.latency_ms * 0.5
        assert abs(r.images_per_s - r.batch / (r.latency_ms / 1e3)) < 1e-6 * r.images_per_s
    table = format_table(results)
    assert "onnxruntime / torch eager images/s: b1: " in table and "b4: " in table
    assert len(table.splitlines()) == 1 + 4 + 1  # header, best of 2 backends x 2 batches, ratios


def test_torch_served_adds_the_service_forms(tiny_dir: Path, tiny_onnx: Path):
    results = run_bench(tiny_dir, tiny_onnx, batches=(2,), threads=(1,), seconds=0.05, rounds=1, torch_served=True)
    backends = {r.backend for r in results}
    assert {"torch eager", "torch traced", "torch traced+NHWC", "onnxruntime"} <= backends
    table = format_table(results)
    assert "torch traced+NHWC" in table and len(table.splitlines()) == 1 + 4 + 1
