"""Pre-train an EDM teacher: ``python -m training.pretrain --data fmnist --arch fmnist``.

Rerun with ``--resume runs/NNNNN-...`` to continue a run exactly where its last snapshot left it.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from training.cli import HelpFormatter, add_step_arguments, resolve_run_config
from training.configs import NETWORK_CONFIGS
from training.distributed import init_distributed, shutdown_distributed
from training.loop import LoopOptions, run_training
from training.precond import count_parameters
from training.pretrain_task import build_task
from training.run_config import PretrainConfig
from training.rundir import open_run_dir

# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description="Pre-train an EDM teacher (class-conditional when the data has labels).",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default="fmnist", help="fmnist | idx:IMAGES,LABELS | cifar10:DIR | folder | file.zip | synthetic:N"
    )
    g.add_argument("--data-path", default=None, help="directory of the Fashion-MNIST IDX files (default: Debian's)")
    g.add_argument("--resolution", type=int, default=None, help="resize images to this size (default: native)")
    g.add_argument("--xflip", action="store_true", help="random horizontal flips")
    g.add_argument("--uncond", action="store_true", help="ignore labels: train an unconditional model")
    g = p.add_argument_group("network")
    g.add_argument("--arch", default="fmnist", choices=sorted(NETWORK_CONFIGS), help="named network config")
    g.add_argument("--dropout", type=float, default=None, help="override the config's dropout")
    g = p.add_argument_group("optimization")
    g.add_argument("--duration", type=float, default=2000, help="training length in kimg (thousands of images)")
    g.add_argument("--batch", type=int, default=64, help="global batch size")
    add_step_arguments(g)
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--lr-rampup-kimg", type=float, default=100, help="linear LR warm-up length")
    g.add_argument("--ema-halflife-kimg", type=float, default=50, help="EMA half-life")
    g.add_argument("--ema-rampup", type=float, default=0.05, help="EMA half-life ramp: at most this x images seen")
    g.add_argument("--grad-clip", type=float, default=0, help="max gradient norm (0 = off; EDM clips nothing)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order and noise")
    g = p.add_argument_group("I/O")
    g.add_argument("--outdir", default="runs", help="where run dirs are created")
    g.add_argument("--desc", default=None, help="run name suffix (default: data-arch)")
    g.add_argument("--tick", type=float, default=2, help="kimg between stats lines")
    g.add_argument("--snap", type=int, default=10, help="ticks between snapshots")
    g.add_argument("--snap-minutes", type=float, default=15, help="also snapshot after this many minutes")
    g.add_argument("--grid-size", type=int, default=60, help="images in each sample grid")
    g.add_argument("--grid-nfe", type=int, default=35, help="Heun NFE for the sample grids")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its last snapshot")
    g.add_argument("--max-steps", type=int, default=None, help="stop (with a snapshot) after this many steps")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def run_config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """A new run's config from its arguments (``--desc`` defaults to data-arch)."""
    return PretrainConfig.from_options(vars(args))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = init_distributed(args.device)
    try:
        cfg, run_dir = resolve_run_config(parser, args, argv, world, PretrainConfig)
        task, stream = build_task(cfg, world)
        cfg = task.cfg  # with the data set's class names
        if run_dir is None:
            run_dir = open_run_dir(cfg, world, {"parameters": count_parameters(task.net)})
        if world.is_main:
            print(
                f"Run dir: {run_dir}  parameters: {count_parameters(task.net):,}  world size: {world.world_size}  "
                f"precision: {cfg.precision}  batch per GPU round: {cfg.batch_gpu or cfg.batch // world.world_size}"
            )
        options = LoopOptions.from_run_config(cfg)
        progress = run_training(
            task, stream, options, world, run_dir, resume=bool(args.resume), max_steps=args.max_steps
        )
        return {"run_dir": str(run_dir), **progress}
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
