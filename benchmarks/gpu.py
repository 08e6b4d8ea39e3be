"""The GPU check: what the one-step generator, the service and training do on a CUDA GPU, in bounded steps.

    python -m benchmarks.gpu STEP --report OUT/gpu_report.json [--dry-run]

``scripts/gpu_check.sh`` runs the steps in order, each under ``timeout``, on the GPU machine; each step merges its
section into the report (written after every measured point, so a step stopped at its limit keeps what it had):

- ``env``: GPU, driver, CUDA, cuDNN, torch and package versions.
- ``pytest``: ``pytest -m gpu`` over the test files that hold GPU tests (rc and summary line).
- ``raw``: the generator alone (the service's own ``BucketRunner``, without HTTP) for models/fmnist-d2o and a
  random-weight ``cifar10-ddpmpp`` generator at batch 1/8/64/256/1024: eager fp32, eager bf16, CUDA graphs fp32
  and bf16. Per point: device throughput (batches back to back on device-resident inputs) and the latency of one
  call as the service makes it (host noise in, pinned copy, forward, uint8 on the GPU, one copy back); bf16's
  parity against fp32; FLOPs per image.
- ``service``: ``python -m benchmarks.service --spawn --backend torch`` at concurrency 1/32/128 with 1-image and
  64-image requests, with the server's CPU per image and the GPU's utilization sampled during each level.
- ``training``: 60 s of bf16 pre-training and 60 s of bf16 fine-tuning through the real loop: images/s.
- ``compile``: ``torch.compile`` under the CUDA graphs against the graphs alone (fmnist-d2o, batch 1 and 64).
- ``summary``: the targets of docs/benchmarks.md ("GPU check"), judged from what the report holds.
- ``mark``: record a step's exit status (the shell script calls it when a step fails or times out).

``--dry-run`` runs the same code on the CPU with tiny sizes and skips what needs a GPU or a server (the CPU tests
check the report's structure with it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1
STEPS = ("env", "pytest", "raw", "service", "training", "compile")
DEFAULT_MODEL = REPO / "models" / "fmnist-d2o"
BATCHES = (1, 8, 64, 256, 1024)
MODES = ("eager-fp32", "eager-bf16", "graphs-fp32", "graphs-bf16")
SERVICE_CONCURRENCY = (1, 32, 128)
SERVICE_IMAGES_PER_REQUEST = (1, 64)
TRAIN_SECONDS = 60.0
TRAIN_BATCH = 256
#: Pre-training images/s of the fmnist config on the 2-core CPU machines these docs were written on: the median of
#: the 593 stats lines of the shipped teacher's own run (runs/00000-fmnist-teacher/stats.jsonl, batch 64, fp32).
#: On the same machine busy with other jobs, benchmarks.training loop gave 3.9 to 42 (docs/benchmarks.md, "GPU check").
CPU_PRETRAIN_IMAGES_PER_S = 149.0
CPU_PRETRAIN_SOURCE = "median of runs/00000-fmnist-teacher/stats.jsonl (2-core CPU, fmnist config, batch 64, fp32)"
#: (resolution, channels, label_dim) of the random-weight generators the raw step builds.
RANDOM_CONFIGS = {"cifar10-ddpmpp": (32, 3, 10), "tiny": (16, 1, 10)}


# ---------------------------------------------------------------- the report file


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_report(path: Path) -> dict[str, Any]:
    if path.is_file():
        with contextlib.suppress(ValueError):
            report = json.loads(path.read_text())
            if isinstance(report, dict):
                return report
    return {"schema": SCHEMA, "created": now(), "steps": {}, "targets": []}


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomically, with the targets re-judged from whatever the report now holds."""
    report["targets"] = evaluate_targets(report)
    report["updated"] = now()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


class Step:
    """Runs one step: marks it running, merges what ``save`` is given into the report, marks it done or failed."""

    def __init__(self, path: Path, name: str, dry_run: bool):
        self.path = path
        self.name = name
        self.dry_run = dry_run
        self.report = load_report(path)
        self.report["dry_run"] = dry_run
        self.started = time.monotonic()
        self.report["steps"][name] = {"status": "running", "started": now()}
        write_report(path, self.report)

    def save(self, section: Any) -> None:
        self.report[self.name] = section
        self.report["steps"][self.name]["seconds"] = round(time.monotonic() - self.started, 1)
        write_report(self.path, self.report)

    def finish(self, status: str = "ok") -> None:
        self.report["steps"][self.name].update(status=status, seconds=round(time.monotonic() - self.started, 1))
        write_report(self.path, self.report)


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- env


def _run_text(cmd: Sequence[str], timeout: float = 20.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def env_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": package_versions(
            [
                "numpy",
                "fastapi",
                "starlette",
                "uvicorn",
                "pydantic",
                "pydantic-settings",
                "httptools",
                "uvloop",
                "httpx",
                "onnxruntime",
                "onnx",
                "triton",
                "tensorrt",
                "prometheus-client",
                "pillow",
            ]
        ),  # fmt: skip
        "nvidia_smi": _run_text(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
        ),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=list(torch.cuda.get_device_capability(0)),
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def step_env(args: argparse.Namespace) -> None:
    step = Step(args.report, "env", args.dry_run)
    info = env_info()
    for k, v in info.items():
        log(f"{k}: {v}")
    step.save(info)
    step.finish()


# ---------------------------------------------------------------- pytest -m gpu


def gpu_test_files(root: Path = REPO / "tests") -> list[str]:
    """The test files that hold GPU-marked tests."""
    return sorted(
        str(p.relative_to(REPO)) for p in root.rglob("test_*.py") if "pytest.mark.gpu" in p.read_text(errors="ignore")
    )


SUMMARY_RE = re.compile(r"^=*\s*((?:\d+ \w+(?: \w+)?,? ?)+) in [\d.]+s")


def pytest_summary(output: str) -> dict[str, int]:
    """{'passed': 3, 'skipped': 1, ...} from pytest's last summary line."""
    counts: dict[str, int] = {}
    for line in reversed(output.splitlines()):
        m = SUMMARY_RE.match(line.strip())
        if m:
            for n, word in re.findall(r"(\d+) (\w+)", m.group(1)):
                counts[word] = int(n)
            break
    return counts


def pytest_failures(output: str) -> list[str]:
    """The ``FAILED``/``ERROR`` lines of pytest's short summary (``-rfE``): the failing tests by name, which a tail
    of the output loses where a failure prints pages of captured log."""
    return [line.strip() for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def step_pytest(args: argparse.Namespace) -> None:
    step = Step(args.report, "pytest", args.dry_run)
    files = gpu_test_files()
    if args.dry_run:
        step.save({"files": files, "skipped": "dry run"})
        step.finish("skipped (dry run)")
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider"]
    cmd += ["--timeout", str(int(args.test_timeout)), *files]
    log(" ".join(cmd))
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=args.budget,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = None
    log(output[-6000:])
    section = {
        "files": files,
        "rc": rc,
        "counts": pytest_summary(output),
        "failures": pytest_failures(output),
        "seconds": round(time.monotonic() - start, 1),
        "tail": output[-3000:],
    }
    step.save(section)
    step.finish("ok" if rc == 0 else f"failed (rc {rc})" if rc is not None else "timed out")


# ---------------------------------------------------------------- raw: the generator alone


def random_generator(config: str, seed: int = 0):
    """A one-step generator of a named network config with EDM's initialization (speed does not depend on weights)."""
    from training.configs import network_config
    from training.precond import D2OPrecond, OneStepGenerator

    res, channels, labels = RANDOM_CONFIGS[config]
    kw = network_config(config)
    model_type = kw.pop("model_type")
    torch.manual_seed(seed)
    den = D2OPrecond(img_resolution=res, img_channels=channels, label_dim=labels, model_type=model_type, **kw)
    return OneStepGenerator(den).eval().requires_grad_(False)


def flops_per_image(model: torch.nn.Module, device: torch.device) -> float | None:
    """Forward FLOPs of one image (torch's FLOP counter: convolutions and matrix products)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        z = torch.zeros(2, *model.img_shape, device=device)
        y = torch.zeros(2, dtype=torch.int64, device=device) if model.label_dim else None
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(z, y) if y is not None else model(z)
        return counter.get_total_flops() / 2
    except Exception:  # noqa: BLE001 - informative only
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(fn: Callable[[], Any], seconds: float, min_calls: int, sync: Callable[[], None]) -> list[float]:
    """Wall time (s) of each synchronized call, for about ``seconds`` (at least ``min_calls``)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < seconds and len(times) < 10_000):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def pipelined_rate(fn: Callable[[], Any], seconds: float, min_calls: int, sync: Callable[[], None]) -> float:
    """Calls per second with calls back to back and one synchronization at the end (the device's rate)."""
    n, start = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < seconds:
        for _ in range(max(1, min_calls)):
            fn()
        n += max(1, min_calls)
        sync()
        if n >= 100_000:
            break
    return n / (time.perf_counter() - start)


def measure_point(
    model_name: str,
    head: torch.nn.Module,
    mode: str,
    batch: int,
    img_shape: Sequence[int],
    label_dim: int,
    device: torch.device,
    seconds: float,
    capture: Callable | None,
    min_calls: int = 3,
) -> dict[str, Any]:
    """One (model, mode, batch): device throughput and the latency of one service-style call."""
    from service.backends.cuda_graphs import BucketRunner
    from training.sampling import seeded_noise

    runner = BucketRunner(
        head,
        img_shape=img_shape,
        label_dim=label_dim,
        device=device,
        buckets=(batch,) if capture is not None else None,
        capture=capture,
    )
    z = seeded_noise(range(batch), img_shape)
    labels = np.arange(batch, dtype=np.int64) % label_dim if label_dim else None
    sync = lambda: synchronize(device)  # noqa: E731
    point: dict[str, Any] = {"model": model_name, "mode": mode, "batch": batch}
    t0 = time.perf_counter()
    runner.run(z, labels)  # capture (graphs) and cuDNN's algorithm choice
    point["setup_s"] = round(time.perf_counter() - t0, 3)
    if capture is not None:
        slot = runner.slots[batch]

        def device_call() -> None:
            with torch.inference_mode():  # a CUDA graph's replay needs none; the CPU stand-in runs the forward
                slot.replay()

    else:
        zd = z.to(device)
        yd = None if labels is None else torch.from_numpy(labels).to(device)

        def device_call() -> None:
            with torch.inference_mode():
                head(zd, yd)

    for _ in range(min(2, min_calls)):
        device_call()
    sync()
    rate = pipelined_rate(device_call, seconds / 2, min_calls=min_calls if batch >= 256 else 3 * min_calls, sync=sync)
    lat = timed_calls(lambda: runner.run(z, labels), seconds / 2, min_calls=min_calls, sync=sync)
    point.update(
        images_per_s=round(rate * batch, 1),
        ms_per_batch=round(1000 / rate, 4),
        latency_ms_p50=round(statistics.median(lat) * 1000, 4),
        latency_ms_p90=round(float(np.percentile(lat, 90)) * 1000, 4),
        e2e_images_per_s=round(batch / statistics.mean(lat), 1),
        calls=len(lat),
    )
    return point


def raw_models(dry_run: bool) -> list[tuple[str, Callable[[], Any]]]:
    """models/fmnist-d2o and a random-weight cifar10-ddpmpp generator; a dry run times a tiny one only."""
    from training.checkpoint import load_model

    if dry_run:
        return [("tiny (random weights)", lambda: random_generator("tiny"))]
    return [
        ("fmnist-d2o", lambda: load_model(DEFAULT_MODEL).eval().requires_grad_(False)),
        ("cifar10-ddpmpp (random weights)", lambda: random_generator("cifar10-ddpmpp")),
    ]


def step_raw(args: argparse.Namespace) -> None:
    from service.backends.cuda_graphs import cuda_graph_capture, eager_capture
    from service.backends.torch import ReducedPrecisionGenerator, Uint8Head, measure_parity

    step = Step(args.report, "raw", args.dry_run)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the service's torch backend sets it
    batches = (1,) if args.dry_run else tuple(args.batches)
    seconds = 0.05 if args.dry_run else args.seconds
    section: dict[str, Any] = {
        "device": str(device),
        "batches": list(batches),
        "modes": list(MODES),
        "note": "images_per_s: batches back to back on device-resident inputs (the device's rate); latency: one "
        "call as the service makes it (host noise in, forward, uint8 on the device, one copy back), synchronized. "
        "fp32 convolutions use TF32 (PyTorch's default for cuDNN).",
        "models": {},
        "points": [],
    }
    for name, build in raw_models(args.dry_run):
        model = build().to(device)
        info: dict[str, Any] = {"img_shape": list(model.img_shape), "label_dim": model.label_dim}
        info["parameters"] = sum(p.numel() for p in model.parameters())
        info["gflop_per_image"] = (lambda f: None if f is None else round(f / 1e9, 3))(flops_per_image(model, device))
        low = ReducedPrecisionGenerator(model, torch.bfloat16).to(device).eval()
        parity = measure_parity(model, low, device, "bfloat16")
        info["bf16_parity"] = {"max_abs": parity.max_abs, "mean_abs_u8": parity.mean_abs_u8, "ok": parity.ok}
        section["models"][name] = info
        step.save(section)
        nets = {
            "fp32": model.to(memory_format=torch.channels_last),
            "bf16": low.to(memory_format=torch.channels_last),
        }
        for mode in MODES:
            kind, dtype = mode.split("-")
            head = Uint8Head(nets[dtype], torch.channels_last, conditional=model.label_dim > 0)
            for batch in batches:
                capture = None
                if kind == "graphs":
                    capture = eager_capture if device.type != "cuda" else cuda_graph_capture()
                try:
                    point = measure_point(
                        name, head, mode, batch, model.img_shape, model.label_dim, device, seconds, capture,
                        min_calls=1 if args.dry_run else 3,
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - recorded, and the next point still runs
                    point = {"model": name, "mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}
                if info["gflop_per_image"] and "images_per_s" in point:
                    point["tflop_per_s"] = round(point["images_per_s"] * info["gflop_per_image"] / 1e3, 2)
                log(json.dumps(point))
                section["points"].append(point)
                step.save(section)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del nets, low, model
    step.finish()


def raw_point(report: dict[str, Any], model: str, mode: str, batch: int) -> dict[str, Any] | None:
    for p in (report.get("raw") or {}).get("points", []):
        if p.get("model", "").split(" ")[0] == model and p.get("mode") == mode and p.get("batch") == batch:
            return p if "error" not in p else None
    return None


# ---------------------------------------------------------------- service: HTTP on the GPU backend


class UtilizationSampler:
    """GPU utilization (%) every ``interval`` seconds in a thread: NVML through torch, else nvidia-smi."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source: str | None = None

    def _read(self) -> float | None:
        if self.source in (None, "nvml"):
            with contextlib.suppress(Exception):
                value = float(torch.cuda.utilization(0))
                self.source = "nvml"
                return value
        text = _run_text(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"], 5.0)
        if text:
            self.source = "nvidia-smi"
            return float(text.splitlines()[0])
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is None:
                return
            self.samples.append((time.monotonic(), value))

    def __enter__(self) -> UtilizationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def mean(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 1) if values else None


LEVEL_RE = re.compile(r"c=(\d+) img/req=(\d+):")


def level_windows(lines: Sequence[tuple[float, str]], duration: float) -> dict[tuple[int, int], tuple[float, float]]:
    """(concurrency, images per request) -> (start, end) of its measured window, from the timestamped progress
    lines ``benchmarks.service`` prints as each level ends (the first of each pair: the dynamic server's)."""
    out: dict[tuple[int, int], tuple[float, float]] = {}
    for t, line in lines:
        m = LEVEL_RE.search(line)
        if m and "max_batch_size=1" not in line:
            key = (int(m.group(1)), int(m.group(2)))
            out.setdefault(key, (t - duration, t))
    return out


def service_levels(bench: dict[str, Any], windows: dict, sampler_mean: Callable) -> list[dict[str, Any]]:
    rows = []
    for lv in bench.get("levels", []):
        if lv.get("label"):
            continue
        key = (lv["concurrency"], lv["images_per_request"])
        window = windows.get(key)
        lat = lv.get("latency_ms") or {}
        rows.append(
            {
                "concurrency": lv["concurrency"],
                "images_per_request": lv["images_per_request"],
                "requests": lv["requests"],
                "errors": lv["errors"],
                "images_per_s": lv["throughput_images_s"],
                "latency_ms_p50": lat.get("p50"),
                "latency_ms_p99": lat.get("p99"),
                "mean_batch_size": lv.get("mean_batch_size"),
                "server_cpu_ms_per_image": lv.get("server_cpu_ms_per_image"),
                "server_cpu_share": lv.get("server_cpu_share"),
                "loadgen_cpu_share": lv.get("loadgen_cpu_share"),
                "gpu_util_pct": None if window is None else sampler_mean(*window),
            }
        )
    return rows


def step_service(args: argparse.Namespace) -> None:
    step = Step(args.report, "service", args.dry_run)
    if args.dry_run:
        step.save({"skipped": "dry run"})
        step.finish("skipped (dry run)")
        return
    out_dir = args.report.parent
    bench_json = out_dir / "service_bench.json"
    models = Path(tempfile.mkdtemp(prefix="onestep-models-"))
    shutil.copytree(DEFAULT_MODEL, models / DEFAULT_MODEL.name, ignore=shutil.ignore_patterns("model*.onnx"))
    cmd = [
        sys.executable, "-m", "benchmarks.service", "--spawn", "--backend", "torch", "--models-dir", str(models),
        "--concurrency", ",".join(map(str, SERVICE_CONCURRENCY)),
        "--images-per-request", ",".join(map(str, SERVICE_IMAGES_PER_REQUEST)),
        "--duration", str(args.level_seconds), "--warmup", "1", "--max-batch-size", str(args.max_batch_size),
        "--no-baseline", "--no-raw", "--json", str(bench_json),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ONESTEP_ENCODE_THREADS": str(args.encode_threads)}
    log(" ".join(cmd))
    lines: list[tuple[float, str]] = []
    rc: int | None = None
    with UtilizationSampler() as sampler:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append((time.monotonic(), line.rstrip()))
                print(line, end="", flush=True)
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.terminate()
    section: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "rc": rc,
        "settings": {"max_batch_size": args.max_batch_size, "encode_threads": args.encode_threads},
        "gpu_util_source": sampler.source,
        "gpu_util_mean_pct": sampler.mean(-math.inf, math.inf),
    }
    if bench_json.is_file():
        bench = json.loads(bench_json.read_text())
        windows = level_windows(lines, args.level_seconds)
        section["levels"] = service_levels(bench, windows, sampler.mean)
        section["server"] = bench.get("server")
        section["machine"] = bench.get("machine")
    step.save(section)
    step.finish("ok" if rc == 0 else f"failed (rc {rc})")


# ---------------------------------------------------------------- training: 60 s of bf16 pre-training and fine-tuning


def training_data(dry_run: bool) -> tuple[str, list[str], str]:
    """(--data, extra arguments, what it is): Fashion-MNIST's IDX files where they are installed, else synthetic
    images of its shape (28x28x1, 10 classes): the network sees the same tensors, so images/s is the same."""
    from training.datasets.idx import FMNIST_DIR, FMNIST_FILES

    if dry_run:
        return "synthetic:64", ["--resolution", "16"], "synthetic 16x16x1, 10 classes (dry run)"
    found = [any((Path(FMNIST_DIR) / n).is_file() for n in (f, f.removesuffix(".gz"))) for f in FMNIST_FILES["train"]]
    if all(found):
        return "fmnist", [], f"Fashion-MNIST ({FMNIST_DIR})"
    return (
        "synthetic:10000",
        ["--resolution", "28"],
        "synthetic 28x28x1, 10 classes (Fashion-MNIST's shape; not installed)",
    )


def timed_loop(task, stream, batch: int, seconds: float, world, run_dir: Path) -> dict[str, Any]:
    """The real training loop for about ``seconds`` (after a few warm-up steps), its grids and exports stubbed."""
    from training.loop import LoopOptions, run_training

    task.sample_images = lambda: torch.zeros(1, 1, 4, 4)  # grids and model dirs are not what we time
    task.export_model = lambda out_dir, images_seen: None
    big = 1e12
    warm = LoopOptions(total_kimg=big, batch_size=batch, tick_kimg=big, snapshot_ticks=10**9, snapshot_minutes=big)
    for sub in ("warmup", "probe", "run"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_training(task, stream, warm, world, run_dir / "warmup", max_steps=3)
    synchronize(world.device)
    t1 = time.perf_counter()
    run_training(task, stream, warm, world, run_dir / "probe", max_steps=5)
    synchronize(world.device)
    per_step = (time.perf_counter() - t1) / 5
    left = max(seconds - (time.perf_counter() - t0), per_step * 5)
    steps = max(5, int(left / per_step))
    tick = max(steps * batch / 1000 / 6, 1e-3)  # about six stats lines
    options = LoopOptions(total_kimg=big, batch_size=batch, tick_kimg=tick, snapshot_ticks=10**9, snapshot_minutes=big)
    t2 = time.perf_counter()
    run_training(task, stream, options, world, run_dir / "run", max_steps=steps)
    synchronize(world.device)
    wall = time.perf_counter() - t2
    ticks = [json.loads(line) for line in (run_dir / "run" / "stats.jsonl").read_text().splitlines()]
    return {
        "steps": steps,
        "batch": batch,
        "seconds": round(wall, 2),
        "images_per_s": round(steps * batch / wall, 1),
        "tick_images_per_s": [t["images_per_s"] for t in ticks],
        "peak_mem_mb": ticks[-1]["peak_mem_mb"] if ticks else None,
        "last_stats": {k: v for k, v in (ticks[-1] if ticks else {}).items() if isinstance(v, (int, float))},
    }


def step_training(args: argparse.Namespace) -> None:
    from training.checkpoint import save_model
    from training.distributed import World
    from training.finetune import parse_args as finetune_args
    from training.finetune import run_config_from_args as finetune_config
    from training.finetune_task import build_task as build_finetune
    from training.pretrain import build_parser as pretrain_parser
    from training.pretrain import run_config_from_args as pretrain_config
    from training.pretrain_task import build_task as build_pretrain

    step = Step(args.report, "training", args.dry_run)
    device = torch.device("cpu" if args.dry_run else "cuda", 0 if not args.dry_run else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = World(device=device)
    data, extra, what = training_data(args.dry_run)
    arch = "tiny" if args.dry_run else "fmnist"
    batch = 8 if args.dry_run else args.train_batch
    seconds = 3.0 if args.dry_run else args.train_seconds
    section: dict[str, Any] = {
        "data": what,
        "arch": arch,
        "precision": "bf16",
        "cpu_baseline_images_per_s": CPU_PRETRAIN_IMAGES_PER_S,
        "cpu_baseline_source": CPU_PRETRAIN_SOURCE,
    }
    with tempfile.TemporaryDirectory(prefix="onestep-train-") as tmp:
        tmp_path = Path(tmp)
        argv = ["--data", data, *extra, "--arch", arch, "--batch", str(batch), "--precision", "bf16"]
        argv += ["--outdir", tmp, "--grid-size", "4"]
        cfg = pretrain_config(pretrain_parser().parse_args(argv))
        task, stream = build_pretrain(cfg, world)
        section["pretrain"] = {
            "precision_resolved": task.cfg.precision,
            **timed_loop(task, stream, batch, seconds, world, tmp_path / "pre"),
        }
        log(f"pretrain: {json.dumps(section['pretrain'])}")
        step.save(section)
        teacher = save_model(task.ema.net, tmp_path / "teacher", class_names=list(task.cfg.class_names))
        del task, stream
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _, ft_args = finetune_args(
            ["--teacher", str(teacher), "--data", data, "--batch", str(batch), "--precision", "bf16", "--outdir", tmp,
             "--grid-size", "4"]
        )  # fmt: skip
        ft_task, ft_stream = build_finetune(finetune_config(ft_args), world)
        section["finetune"] = {
            "precision_resolved": ft_task.cfg.precision,
            "disc": ft_task.cfg.disc,
            "freeze": ft_task.cfg.freeze,
            **timed_loop(ft_task, ft_stream, batch, seconds, world, tmp_path / "ft"),
        }
        log(f"finetune: {json.dumps(section['finetune'])}")
        step.save(section)
    step.finish()


# ---------------------------------------------------------------- compile: torch.compile under the graphs


def step_compile(args: argparse.Namespace) -> None:
    from service.backends.cuda_graphs import cuda_graph_capture
    from service.backends.torch import ReducedPrecisionGenerator, Uint8Head, compile_module
    from training.checkpoint import load_model

    step = Step(args.report, "compile", args.dry_run)
    if args.dry_run:
        step.save({"skipped": "dry run (torch.compile needs a CUDA GPU here)"})
        step.finish("skipped (dry run)")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = load_model(DEFAULT_MODEL).eval().requires_grad_(False).to(device)
    net = ReducedPrecisionGenerator(model, torch.bfloat16).to(device).eval().to(memory_format=torch.channels_last)
    section: dict[str, Any] = {"model": "fmnist-d2o", "dtype": "bf16", "points": []}
    for label, module in (("graphs-bf16", net), ("compile+graphs-bf16", compile_module(net))):
        head = Uint8Head(module, torch.channels_last, conditional=model.label_dim > 0)
        for batch in (1, 64):
            try:
                point = measure_point(
                    "fmnist-d2o", head, label, batch, model.img_shape, model.label_dim, device, args.seconds,
                    cuda_graph_capture(),
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                point = {"mode": label, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}
            log(json.dumps(point))
            section["points"].append(point)
            step.save(section)
    step.finish()


# ---------------------------------------------------------------- targets


def _target(name: str, value: float | None, limit: float, detail: str, le: bool = False) -> dict[str, Any]:
    ok = None if value is None else (value <= limit if le else value >= limit)
    return {"name": name, "value": value, "limit": limit, "le": le, "ok": ok, "detail": detail}


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of docs/benchmarks.md ("GPU check"); ok None where the report lacks the figures."""
    out = []
    for model in ("fmnist-d2o", "cifar10-ddpmpp"):
        g, e = raw_point(report, model, "graphs-bf16", 1), raw_point(report, model, "eager-bf16", 1)
        value = g["images_per_s"] / e["images_per_s"] if g and e else None
        out.append(
            _target(
                f"CUDA graphs / eager at batch 1, {model}",
                value,
                3.0,
                "device images/s, bf16 both" if value else "not measured",
            )
        )
    for model in ("fmnist-d2o", "cifar10-ddpmpp"):
        g = raw_point(report, model, "graphs-bf16", 1)
        out.append(
            _target(
                f"batch-1 latency (ms), {model}",
                g["latency_ms_p50"] if g else None,
                1.0,
                "p50 of one call: host noise in, CUDA graph, uint8 back" if g else "not measured",
                le=True,
            )
        )
    b, f = (
        raw_point(report, "cifar10-ddpmpp", "eager-bf16", 256),
        raw_point(report, "cifar10-ddpmpp", "eager-fp32", 256),
    )
    out.append(
        _target(
            "bf16 / fp32 at batch 256, cifar10-ddpmpp",
            b["images_per_s"] / f["images_per_s"] if b and f else None,
            1.5,
            "eager, device images/s (fp32 with PyTorch's default TF32 convolutions)" if b and f else "not measured",
        )
    )
    raw64 = raw_point(report, "fmnist-d2o", "graphs-bf16", 64)
    levels = [lv for lv in (report.get("service") or {}).get("levels", []) if lv.get("images_per_request") == 64]
    best = max(levels, key=lambda lv: lv["images_per_s"], default=None)
    value = best["images_per_s"] / raw64["e2e_images_per_s"] if best and raw64 else None
    detail = "not measured"
    if value is not None:
        detail = (
            f"HTTP {best['images_per_s']:.0f} img/s at c={best['concurrency']} (server CPU "
            f"{best['server_cpu_ms_per_image']} ms/img, {best['server_cpu_share']} of the machine, GPU "
            f"{best['gpu_util_pct']}% busy) vs raw batch-64 {raw64['e2e_images_per_s']:.0f} img/s; where it misses, "
            "a busy server CPU and an idle GPU say HTTP is the limit"
        )
    out.append(_target("HTTP 64-image requests / raw batch 64, fmnist-d2o", value, 0.7, detail))
    pre = (report.get("training") or {}).get("pretrain")
    value = pre["images_per_s"] / CPU_PRETRAIN_IMAGES_PER_S if pre and "images_per_s" in pre else None
    out.append(
        _target(
            "pre-training images/s, GPU / CPU",
            value,
            50.0,
            f"bf16 batch {pre['batch']}, {pre['images_per_s']} img/s, vs {CPU_PRETRAIN_IMAGES_PER_S} img/s: "
            f"{CPU_PRETRAIN_SOURCE}"
            if value
            else "not measured",
        )
    )
    return out


def step_summary(args: argparse.Namespace) -> None:
    report = load_report(args.report)
    write_report(args.report, report)
    report = load_report(args.report)
    log("\nsteps: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds')} s)" for k, v in report["steps"].items()))
    for t in report["targets"]:
        result = "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "MISS")
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        log(f"{result:5s} {t['name']}: {value} ({'<=' if t['le'] else '>='} {t['limit']}) {t['detail']}")


def step_mark(args: argparse.Namespace) -> None:
    report = load_report(args.report)
    entry = report["steps"].setdefault(args.step, {})
    entry["status"] = args.status
    write_report(args.report, report)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    p.add_argument("step", choices=[*STEPS, "summary"], help="what to run (also: mark STEP --status TEXT)")
    p.add_argument("--report", type=Path, required=True, help="the report JSON (created or merged into)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; skip what needs a GPU or a server")
    p.add_argument("--seconds", type=float, default=0.4, help="raw/compile: seconds per point")
    p.add_argument(
        "--batches",
        type=lambda s: [int(v) for v in s.split(",")],
        default=list(BATCHES),
        help="raw/compile: comma-separated batch sizes",
    )
    p.add_argument("--budget", type=float, default=80.0, help="pytest: seconds for the whole run")
    p.add_argument("--test-timeout", type=float, default=60.0, help="pytest: seconds per test")
    p.add_argument("--level-seconds", type=float, default=5.0, help="service: measured seconds per level")
    p.add_argument("--max-batch-size", type=int, default=256, help="service: ONESTEP_MAX_BATCH_SIZE")
    p.add_argument("--encode-threads", type=int, default=4, help="service: ONESTEP_ENCODE_THREADS")
    p.add_argument("--train-seconds", type=float, default=TRAIN_SECONDS, help="training: seconds per run")
    p.add_argument("--train-batch", type=int, default=TRAIN_BATCH, help="training: global batch")
    p.add_argument("--status", default="failed", help="mark: the status to record")
    return p


RUNNERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "env": step_env,
    "pytest": step_pytest,
    "raw": step_raw,
    "service": step_service,
    "training": step_training,
    "compile": step_compile,
    "summary": step_summary,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mark"]:  # mark STEP --status ...: the step to mark is the second word
        p = argparse.ArgumentParser(prog="python -m benchmarks.gpu mark")
        p.add_argument("mark")
        p.add_argument("step")
        p.add_argument("--report", type=Path, required=True)
        p.add_argument("--status", required=True)
        step_mark(p.parse_args(argv))
        return 0
    args = build_parser().parse_args(argv)
    if not args.dry_run and args.step in ("raw", "training", "compile") and not torch.cuda.is_available():
        print(f"benchmarks.gpu {args.step}: no CUDA GPU here (use --dry-run on a CPU)", file=sys.stderr)
        Step(args.report, args.step, False).finish("skipped (no CUDA GPU)")
        return 3
    RUNNERS[args.step](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
