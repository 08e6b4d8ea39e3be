"""Training throughput: the full pre-training loop against the bare optimizer step of the same network.

``python -m training.bench`` prints both images/s and their ratio (target >= 0.9: the loop's data stream,
EMA, stats and bookkeeping should cost under 10%). The two are measured in alternating rounds in one run so
that load from other processes affects both alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from training.distributed import World
from training.loop import LoopOptions, run_training
from training.pretrain import build_parser, run_config_from_args
from training.pretrain_task import build_task


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


def loop_rate(task, stream, cfg: dict, steps: int, run_dir: Path, resume: bool) -> float:
    """Images/s of the real loop over ``steps`` steps, read from its stats line (snapshot time excluded)."""
    options = LoopOptions(
        total_kimg=1e9, batch_size=cfg["batch"], tick_kimg=1e9, snapshot_ticks=10**9, snapshot_minutes=1e9
    )
    task.sample_images = lambda: torch.zeros(1, task.net.img_channels, 4, 4)  # grids are not what we time
    task.export_model = lambda out_dir, images_seen: None
    run_training(task, stream, options, World(), run_dir, resume=resume, max_steps=steps)
    last = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
    return float(last["images_per_s"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__)
    p.add_argument("--data", default="fmnist")
    p.add_argument("--arch", default="fmnist")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = run_config_from_args(
        build_parser().parse_args(["--data", args.data, "--arch", args.arch, "--batch", str(args.batch)])
    )
    task, stream = build_task(cfg, World())
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


if __name__ == "__main__":
    main()
