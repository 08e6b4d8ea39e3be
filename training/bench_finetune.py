"""Fine-tune throughput against pre-training throughput on the same network: ``python -m training.bench_finetune``.

Both tasks run their real ``train_step`` on the same global batch size, class-conditional, 28x28x1 (the
``fmnist`` config) by default, on synthetic data: pre-training is EDM's denoising step; fine-tuning is one D step
(reals + fakes, lazy R1 every ``--r1-interval`` steps), one G step through D, and the EMA. Rounds alternate between
the two so that load from other processes affects both alike; the best round of each is reported. A fine-tune
image means one real image seen by D (and one generated image).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from training.checkpoint import save_model
from training.distributed import World
from training.finetune import build_task as build_finetune
from training.finetune import parse_args as finetune_args
from training.finetune import run_config_from_args as finetune_config
from training.pretrain import build_parser as pretrain_parser
from training.pretrain import run_config_from_args as pretrain_config
from training.pretrain_task import build_task as build_pretrain


def step_rate(task, stream, steps: int, start: int, batch: int) -> float:
    """Images/s over ``steps`` calls of ``task.train_step`` (the data stream included, no loop bookkeeping)."""
    t0 = time.perf_counter()
    for step in range(start, start + steps):
        images, labels = next(stream)
        task.train_step(images, labels, step, step * batch)
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    p = argparse.ArgumentParser(prog="python -m training.bench_finetune", description=__doc__)
    p.add_argument("--arch", default="fmnist", help="network config of the teacher (and of pre-training)")
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=16, help="steps per round (16 includes one R1 step)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--disc", default="teacher", choices=["teacher", "scratch"])
    p.add_argument("--freeze", default="d2o-f", choices=["none", "d2o-f"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = World(device=torch.device(args.device))
    data = "synthetic:512"
    pre_cfg = pretrain_config(
        pretrain_parser().parse_args(
            ["--data", data, "--arch", args.arch, "--resolution", str(args.resolution), "--batch", str(args.batch)]
        )
    )
    pre_task, pre_stream = build_pretrain(pre_cfg, world)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = save_model(pre_task.ema.net, Path(tmp) / "teacher", class_names=pre_cfg["class_names"])
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
    result: dict[str, float | int | str] = {
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


if __name__ == "__main__":
    main()
