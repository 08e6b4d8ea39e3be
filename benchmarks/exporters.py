"""Throughput and latency of the exported generator: torch eager vs ONNX Runtime (CPU), and the GPU paths.

``python -m benchmarks.exporters --model MODEL_DIR`` or ``--config fmnist`` (a random-weight generator of that
architecture: speed does not depend on the weights). Each backend setting (threads, executor) is timed in
several interleaved rounds so that a background load hits all of them alike; the best round's median
latency counts, and the best setting per backend and batch is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.onnx import ONNX_NAME, OnnxRunner, export_onnx
from exporters.parity import seeded_inputs
from training.checkpoint import load_model, save_model
from training.cli import HelpFormatter
from training.configs import network_config
from training.precond import D2OPrecond, OneStepGenerator

# (resolution, channels, label_dim) of the data each named config is meant for.
CONFIG_DATA = {
    "tiny": (16, 1, 10),
    "fmnist": (28, 1, 10),
    "cifar10-ddpmpp": (32, 3, 10),
    "cifar10-ncsnpp": (32, 3, 10),
    "64-ddpmpp": (64, 3, 0),
    "imagenet64-adm": (64, 3, 1000),
}


@dataclass
class Result:
    backend: str
    setting: str
    batch: int
    latency_ms: float  # median of the best round
    p90_ms: float
    images_per_s: float


def make_random_model(config: str, out_dir: Path | str, seed: int = 0) -> Path:
    """A one-step generator with EDM's random initialization, saved as a model dir."""
    if config not in CONFIG_DATA:
        raise KeyError(f"unknown config {config!r}; choose from {', '.join(CONFIG_DATA)}")
    res, channels, labels = CONFIG_DATA[config]
    kw = network_config(config)
    model_type = kw.pop("model_type")
    torch.manual_seed(seed)
    den = D2OPrecond(img_resolution=res, img_channels=channels, label_dim=labels, model_type=model_type, **kw)
    return save_model(OneStepGenerator(den), out_dir, name=f"random-{config}")


def time_calls(fn: Callable[[], Any], seconds: float, min_calls: int = 3, sync: Callable[[], None] | None = None):
    """Per-call latencies (s) of ``fn`` for about ``seconds`` (at least ``min_calls`` calls)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
    return times


def measure(
    candidates: dict[str, tuple[Callable[[], Callable[[], Any]], Callable[[], None] | None]],
    *,
    seconds: float,
    rounds: int,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Time each candidate in ``rounds`` interleaved rounds; returns the latencies of each one's best round.

    A candidate is (setup -> fn, sync): setup applies its settings (threads) and returns the call to time.
    """
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, (setup, sync) in candidates.items():
            fn = setup()
            for _ in range(warmup):
                fn()
            if sync is not None:
                sync()
            times = time_calls(fn, seconds / rounds, sync=sync)
            if name not in best or statistics.median(times) < statistics.median(best[name]):
                best[name] = times
    return best


def summarize(backend: str, setting: str, batch: int, times: Sequence[float]) -> Result:
    med = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    return Result(backend, setting, batch, med * 1e3, p90 * 1e3, batch / med)


def ort_runners(onnx_path: Path, threads: Sequence[int]) -> dict[str, OnnxRunner]:
    """One session per setting: intra-op threads x sequential/parallel executor."""
    return {
        f"threads={n},{'parallel' if parallel else 'sequential'}": OnnxRunner(
            onnx_path, intra_op_threads=n, parallel=parallel
        )
        for n in threads
        for parallel in (False, True)
    }


def served_torch_variants(generator: OneStepGenerator) -> dict[str, tuple[torch.nn.Module, torch.memory_format]]:
    """The torch service backend's forms of ``generator`` (``service.backends.torch``), each checked against eager."""
    from service.backends.torch import compile_generator

    cpu = torch.device("cpu")
    return {
        "torch traced": (compile_generator(generator, cpu, jit=True, channels_last=False), torch.contiguous_format),
        "torch traced+NHWC": (compile_generator(generator, cpu, jit=True, channels_last=True), torch.channels_last),
    }


def cpu_candidates(
    generator: OneStepGenerator,
    runners: dict[str, OnnxRunner],
    z: np.ndarray,
    labels: np.ndarray | None,
    threads: Sequence[int],
    torch_variants: dict[str, tuple[torch.nn.Module, torch.memory_format]] | None = None,
) -> dict[str, tuple]:
    cands: dict[str, tuple] = {}
    lt = None if labels is None else torch.from_numpy(labels)
    variants = {"torch eager": (generator, torch.contiguous_format), **(torch_variants or {})}
    for n in threads:
        for backend, (module, memory_format) in variants.items():
            zt = torch.from_numpy(z).contiguous(memory_format=memory_format)

            def setup_torch(n: int = n, module: torch.nn.Module = module, zt: torch.Tensor = zt):
                torch.set_num_threads(n)

                def fn():
                    with torch.inference_mode():
                        return module(zt, lt).clamp(-1, 1)

                return fn

            cands[f"{backend}|threads={n}"] = (setup_torch, None)
    for setting, runner in runners.items():

        def setup_ort(r: OnnxRunner = runner):
            feeds = r.feeds(z, labels)
            return lambda: r.session.run(r.output_names, feeds)

        cands[f"onnxruntime|{setting}"] = (setup_ort, None)
    return cands


def gpu_candidates(generator: OneStepGenerator, z: np.ndarray, labels: np.ndarray | None, plan: Path | None):
    """torch CUDA eager (fp32, fp16/bf16 autocast) and a TensorRT plan when given; needs a CUDA build of torch."""
    cands: dict[str, tuple] = {}
    gen = generator.to("cuda")
    zt = torch.from_numpy(z).cuda()
    lt = None if labels is None else torch.from_numpy(labels).cuda()
    sync = torch.cuda.synchronize
    dtypes = {"fp32": None, "fp16": torch.float16}
    if torch.cuda.is_bf16_supported():
        dtypes["bf16"] = torch.bfloat16
    for name, dtype in dtypes.items():

        def setup(dtype: torch.dtype | None = dtype):
            def fn():
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None),
                ):
                    return gen(zt, lt).clamp(-1, 1)

            return fn

        cands[f"torch cuda|{name}"] = (setup, sync)
    if plan is not None:
        from exporters.tensorrt import TensorRTRunner

        runner = TensorRTRunner(plan)
        if int(z.shape[0]) <= runner.max_batch:
            cands[f"tensorrt|{runner.sidecar.get('precision')}"] = (lambda: lambda: runner.run_device(zt, lt), sync)
    return cands


def run_bench(
    model_dir: Path,
    onnx_path: Path,
    *,
    batches: Sequence[int] = (1, 8, 32, 64),
    threads: Sequence[int] = (1, 2),
    seconds: float = 3.0,
    rounds: int = 3,
    gpu: bool = False,
    plan: Path | None = None,
    torch_served: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """``torch_served`` adds the service's torch forms (TorchScript trace, and trace with channels-last)."""
    generator = load_model(model_dir)
    assert isinstance(generator, OneStepGenerator)
    results: list[Result] = []
    runners = ort_runners(onnx_path, threads)
    torch_threads = torch.get_num_threads()
    variants = served_torch_variants(generator) if torch_served else None
    for batch in batches:
        z, labels = seeded_inputs(generator.img_shape, generator.label_dim, batch, seed=batch)
        cands = cpu_candidates(generator, runners, z, labels, threads, variants)
        for name, times in measure(cands, seconds=seconds, rounds=rounds).items():
            backend, setting = name.split("|")
            results.append(summarize(backend, setting, batch, times))
        if gpu:
            gcands = gpu_candidates(load_model(model_dir), z, labels, plan)
            for name, times in measure(gcands, seconds=seconds, rounds=rounds).items():
                backend, setting = name.split("|")
                results.append(summarize(backend, setting, batch, times))
        if progress:
            progress(f"batch {batch} done")
    torch.set_num_threads(torch_threads)
    return results


def best_per_backend(results: Sequence[Result]) -> dict[tuple[str, int], Result]:
    best: dict[tuple[str, int], Result] = {}
    for r in results:
        key = (r.backend, r.batch)
        if key not in best or r.images_per_s > best[key].images_per_s:
            best[key] = r
    return best


def format_table(results: Sequence[Result], *, all_settings: bool = False) -> str:
    best = best_per_backend(results)
    rows = results if all_settings else sorted(best.values(), key=lambda r: (r.batch, r.backend))
    width = max([12, *(len(r.backend) for r in rows)])
    lines = [f"{'backend':<{width}} {'best setting':<26} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'images/s':>9}"]
    for r in rows:
        lines.append(
            f"{r.backend:<{width}} {r.setting:<26} {r.batch:>5} {r.latency_ms:>9.2f} {r.p90_ms:>9.2f} "
            f"{r.images_per_s:>9.1f}"
        )
    batches = sorted({r.batch for r in results})
    if any(("torch eager", b) in best and ("onnxruntime", b) in best for b in batches):
        ratios = [
            f"b{b}: {best[('onnxruntime', b)].images_per_s / best[('torch eager', b)].images_per_s:.2f}x"
            for b in batches
            if ("torch eager", b) in best and ("onnxruntime", b) in best
        ]
        lines.append("onnxruntime / torch eager images/s: " + ", ".join(ratios))
    return "\n".join(lines)


def machine_line() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"CPU: {cores} cores {name}"
    if torch.cuda.is_available():
        line += f"; GPU: {torch.cuda.get_device_name(0)}"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.exporters", description=__doc__, formatter_class=HelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="model dir (uses its model.onnx, exporting one if missing)")
    src.add_argument("--config", choices=sorted(CONFIG_DATA), help="random-weight generator of this architecture")
    p.add_argument(
        "--batches", type=lambda s: [int(b) for b in s.split(",")], default="1,8,32,64", help="batch sizes timed"
    )
    p.add_argument(
        "--threads",
        type=lambda s: [int(b) for b in s.split(",")],
        default="1,2",
        help="thread counts tried for torch and ONNX Runtime",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="timing per setting and batch, over all rounds")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds, interleaved across settings")
    p.add_argument("--gpu", action="store_true", help="also time torch CUDA (and --plan) when CUDA is available")
    p.add_argument("--plan", type=Path, help="TensorRT plan to time with --gpu")
    p.add_argument(
        "--torch-served",
        action="store_true",
        help="also time the torch service backend's forms: TorchScript trace, and trace with channels-last",
    )
    p.add_argument("--all", action="store_true", help="print every setting, not only the best per backend")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("exporters").addHandler(handler)
    logging.getLogger("exporters").setLevel(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            model_dir = make_random_model(args.config, Path(tmp) / f"random-{args.config}")
            onnx_path = export_onnx(model_dir, parity_batches=(1, 7))
        else:
            model_dir = args.model
            onnx_path = model_dir / ONNX_NAME
            if not onnx_path.is_file():
                onnx_path = export_onnx(model_dir, Path(tmp) / ONNX_NAME, parity_batches=(1, 7))
        gpu = args.gpu and torch.cuda.is_available()
        if args.gpu and not gpu:
            print("note: --gpu given but CUDA is not available; GPU paths skipped", file=sys.stderr)
        header = [
            f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"command: python -m benchmarks.exporters {' '.join(argv if argv is not None else sys.argv[1:])}",
            f"machine: {machine_line()}; torch {torch.__version__}, onnxruntime {_ort_version()}",
            f"model: {args.config or model_dir} ({sum(p.numel() for p in load_model(model_dir).parameters()):,} "
            "parameters)",
        ]
        print("\n".join(header), flush=True)
        results = run_bench(
            model_dir,
            onnx_path,
            batches=args.batches,
            threads=args.threads,
            seconds=args.seconds,
            rounds=args.rounds,
            gpu=gpu,
            plan=args.plan,
            torch_served=args.torch_served,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    print(format_table(results, all_settings=args.all))
    if args.all:
        print()
        print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": [asdict(r) for r in results]}, indent=2))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
