"""Training throughput, in two modes of ``python -m benchmarks.training``:

``loop``: the full pre-training loop against the bare optimizer step of the same network; prints both images/s
and their ratio (target >= 0.9: the loop's data stream, EMA, stats and bookkeeping should cost under 10%).

``finetune``: fine-tune throughput against pre-training throughput on the same network. Both tasks run their
real ``train_step`` on the same global batch size, class-conditional, 28x28x1 (the ``fmnist`` config) by default,
on synthetic data: pre-training is EDM's denoising step; fine-tuning is one D step (reals + fakes, lazy R1 every
``--r1-interval`` steps), one G step through D, and the EMA. A fine-tune image means one real image seen by D (and
one generated image).

In both, the two rates are measured in alternating rounds in one run so that load from other processes affects
both alike; the best round of each is reported.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import save_model
from training.cli import HelpFormatter
from training.distributed import World
from training.finetune import parse_args as finetune_args
from training.finetune import run_config_from_args as finetune_config
from training.finetune_task import build_task as build_finetune
from training.loop import LoopOptions, run_training
from training.pretrain import build_parser as pretrain_parser
from training.pretrain import run_config_from_args as pretrain_config
from training.pretrain_task import build_task as build_pretrain
from training.run_config import PretrainConfig

# ---------------------------------------------------------------- loop: the loop against the bare step


def bare_step_rate(task, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Images/s of forward + backward + Adam on one resident batch: no data, EMA, stats or loop."""
    net, opt, loss_fn = task.net, task.opt, task.loss_fn
    labels = labels if net.label_dim else None
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(net, images, labels).sum().mul(1 / images.shape[0]).backward()
        opt.step()
    return steps * images.shape[0] / (time.perf_counter() - start)


def loop_rate(task, stream, cfg: PretrainConfig, steps: int, run_dir: Path, resume: bool) -> float:
    """Images/s of the real loop over ``steps`` steps, read from its stats line (snapshot time excluded)."""
    options = LoopOptions(
        total_kimg=1e9, batch_size=cfg.batch, tick_kimg=1e9, snapshot_ticks=10**9, snapshot_minutes=1e9
    )
    task.sample_images = lambda: torch.zeros(1, task.net.img_channels, 4, 4)  # grids are not what we time
    task.export_model = lambda out_dir, images_seen: None
    run_training(task, stream, options, World(), run_dir, resume=resume, max_steps=steps)
    last = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
    return float(last["images_per_s"])


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fmnist", help="data set spec, as training.pretrain takes it")
    p.add_argument("--arch", default="fmnist", help="network config")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each timing both the bare step and the loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    cfg = pretrain_config(
        pretrain_parser().parse_args(["--data", args.data, "--arch", args.arch, "--batch", str(args.batch)])
    )
    task, stream = build_pretrain(cfg, World())
    images, labels = next(stream)
    bare_step_rate(task, images, labels, 2)  # warm-up
    bare, looped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare.append(bare_step_rate(task, images, labels, args.steps))
            looped.append(loop_rate(task, stream, cfg, args.steps, Path(tmp), resume=False))
            print(f"round {r + 1}: bare {bare[-1]:.1f} img/s, loop {looped[-1]:.1f} img/s", flush=True)
    result = {
        "bare_images_per_s": max(bare),
        "loop_images_per_s": max(looped),
        "ratio": max(looped) / max(bare),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "arch": args.arch,
    }
    print(
        f"{args.arch} batch {args.batch}, {result['threads']} threads: loop {result['loop_images_per_s']:.1f} img/s"
        f" / bare step {result['bare_images_per_s']:.1f} img/s = {result['ratio']:.3f} (target >= 0.9)"
    )
    return result


# ---------------------------------------------------------------- finetune: fine-tune steps against pre-train steps


def step_rate(task, stream, steps: int, start: int, batch: int) -> float:
    """Images/s over ``steps`` calls of ``task.train_step`` (the data stream included, no loop bookkeeping)."""
    t0 = time.perf_counter()
    for step in range(start, start + steps):
        images, labels = next(stream)
        task.train_step(images, labels, step, step * batch)
    return steps * batch / (time.perf_counter() - t0)


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="fmnist", help="network config of the teacher (and of pre-training)")
    p.add_argument("--resolution", type=int, default=28, help="image size of the synthetic data")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--steps", type=int, default=16, help="steps per round (16 includes one R1 step)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each timing fine-tune and pre-training steps")
    p.add_argument("--disc", default="teacher", choices=["teacher", "scratch"], help="discriminator")
    p.add_argument("--freeze", default="d2o-f", choices=["none", "d2o-f"], help="frozen generator parameters")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device")


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    world = World(device=torch.device(args.device))
    data = "synthetic:512"
    pre_cfg = pretrain_config(
        pretrain_parser().parse_args(
            ["--data", data, "--arch", args.arch, "--resolution", str(args.resolution), "--batch", str(args.batch)]
        )
    )
    pre_task, pre_stream = build_pretrain(pre_cfg, world)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = save_model(pre_task.ema.net, Path(tmp) / "teacher", class_names=list(pre_task.cfg.class_names))
        _, ft_args = finetune_args(
            [
                "--teacher", str(teacher), "--data", data, "--batch", str(args.batch),
                "--disc", args.disc, "--freeze", args.freeze, "--outdir", tmp,
            ]
        )  # fmt: skip
        ft_cfg = finetune_config(ft_args)
        ft_task, ft_stream = build_finetune(ft_cfg, world)
        step_rate(pre_task, pre_stream, 2, 0, args.batch)  # warm-up
        step_rate(ft_task, ft_stream, 2, 1, args.batch)  # (step 1: no R1 in the warm-up)
        pre, ft = [], []
        for r in range(args.rounds):
            pre.append(step_rate(pre_task, pre_stream, args.steps, 2 + r * args.steps, args.batch))
            ft.append(step_rate(ft_task, ft_stream, args.steps, 2 + r * args.steps, args.batch))
            print(f"round {r + 1}: pretrain {pre[-1]:.1f} img/s, finetune {ft[-1]:.1f} img/s", flush=True)
    result: dict[str, Any] = {
        "pretrain_images_per_s": round(max(pre), 2),
        "finetune_images_per_s": round(max(ft), 2),
        "ratio": round(max(ft) / max(pre), 3),
        "arch": args.arch,
        "batch": args.batch,
        "disc": args.disc,
        "freeze": args.freeze,
        "threads": torch.get_num_threads(),
        "device": str(world.device),
    }
    print(
        f"{args.arch} {args.resolution}x{args.resolution} batch {args.batch}, disc {args.disc}, freeze {args.freeze},"
        f" {result['threads']} threads: fine-tune {result['finetune_images_per_s']} img/s vs pre-train "
        f"{result['pretrain_images_per_s']} img/s (ratio {result['ratio']})"
    )
    return result


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = p.add_subparsers(dest="mode", required=True, metavar="{loop,finetune}")
    fmt = HelpFormatter
    loop = modes.add_parser("loop", help="the pre-training loop against the bare optimizer step", formatter_class=fmt)
    add_loop_arguments(loop)
    loop.set_defaults(run=run_loop)
    finetune = modes.add_parser(
        "finetune", help="fine-tune steps against pre-training steps on the same network", formatter_class=fmt
    )
    add_finetune_arguments(finetune)
    finetune.set_defaults(run=run_finetune)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.run(args)


if __name__ == "__main__":
    main()
