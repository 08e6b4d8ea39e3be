"""``python -m training.finetune``: D2O / D2O-F, a GAN-only fine-tune of an EDM teacher into a one-step generator.

``python -m training.finetune --teacher RUN_OR_MODEL_DIR [--preset fmnist]``; rerun with ``--resume RUN_DIR``.
The method, the step and its losses are described in ``training.finetune_task``; this module parses arguments.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from training.cli import HelpFormatter, add_step_arguments, given_options, resolve_run_config
from training.discriminator import DEFAULT_SIGMAS
from training.distributed import init_distributed, shutdown_distributed
from training.finetune_task import build_task, describe
from training.freeze import FREEZE_MODES
from training.loop import LoopOptions, RunLog, run_training
from training.precond import SIGMA_MAX
from training.presets import preset_args, preset_names
from training.run_config import DISC_CONDS, DISCS, DISTILL_LOSSES, OBJECTIVES, FinetuneConfig
from training.rundir import open_run_dir

# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description="D2O / D2O-F: GAN-only fine-tune of an EDM teacher into a one-step generator.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", default=None, choices=preset_names(), help="named option set; explicit options win")
    g = p.add_argument_group("teacher and data")
    g.add_argument("--teacher", default=None, help="teacher run dir (pre-training) or denoiser model dir [required]")
    g.add_argument(
        "--data", default="fmnist", help="fmnist | idx:IMAGES,LABELS | cifar10:DIR | folder | file.zip | synthetic:N"
    )
    g.add_argument("--data-path", default=None, help="directory of the data set files where the spec needs one")
    g = p.add_argument_group("method")
    g.add_argument("--objective", default="gan", choices=OBJECTIVES, help="gan is D2O; distill is the baseline")
    g.add_argument(
        "--freeze",
        default="d2o-f",
        choices=FREEZE_MODES,
        help="d2o-f freezes the block convs (D2O-F); d2o-f-encoder / d2o-f-decoder only the encoder's / decoder's; "
        "d2o-f-plus also the blocks' 1x1 skips and qkv",
    )
    g.add_argument("--disc", default="teacher", choices=DISCS, help="D: frozen teacher encoder, scratch, or a file")
    g.add_argument("--disc-width", type=int, default=64, help="channels of each discriminator head")
    g.add_argument(
        "--disc-sigmas",
        type=lambda s: [float(v) for v in s.split(",")],
        default=list(DEFAULT_SIGMAS),
        help="noise levels at which the teacher encoder sees images (comma list)",
    )
    g.add_argument("--disc-backbone", default=None, metavar="FILE.safetensors", help="weights of a pluggable backbone")
    g.add_argument("--disc-backbone-config", default=None, metavar="FILE.json", help="its config (see docs)")
    g.add_argument(
        "--disc-mbstd",
        type=int,
        default=0,
        metavar="GROUP",
        help="minibatch standard deviation over groups of GROUP samples in D's heads, against mode collapse (0 = off)",
    )
    g.add_argument(
        "--disc-cond",
        default="projection",
        choices=DISC_CONDS,
        help="how D sees the class: projection (each head's class projection, and the teacher encoder's class "
        "embedding) or backbone (the encoder's embedding only; scratch and file backbones then ignore the class)",
    )
    g.add_argument("--r1-gamma", type=float, default=1e-4, help="R1 weight on reals (0 = off)")
    g.add_argument("--r1-interval", type=int, default=16, help="apply R1 every this many D steps, scaled by it")
    g.add_argument(
        "--augment",
        default="none",
        help="DiffAugment for what D sees, reals and fakes alike: none or a comma list of color, translation, cutout",
    )
    g.add_argument("--pairs", default=None, help="pairs dir from python -m training.make_pairs (distill objectives)")
    g.add_argument("--distill-loss", default="l2", choices=DISTILL_LOSSES, help="distance for distill objectives")
    g.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distill term")
    g.add_argument(
        "--mode-seeking",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of MSGAN's mode-seeking term: for a second noise of each sample's class, the noise distance over "
        "the images' teacher-feature distance (0 = off)",
    )
    g.add_argument("--sigma", type=float, default=SIGMA_MAX, help="the generator's noise level")
    g = p.add_argument_group("optimization")
    g.add_argument("--duration", type=float, default=100, help="fine-tune length in kimg (real images seen by D)")
    g.add_argument("--batch", type=int, default=32, help="global batch size")
    add_step_arguments(g)
    g.add_argument("--g-lr", type=float, default=1e-4, help="generator Adam learning rate")
    g.add_argument("--d-lr", type=float, default=1e-4, help="discriminator Adam learning rate")
    g.add_argument(
        "--g-lr-end",
        type=float,
        default=None,
        metavar="LR",
        help="cosine decay of G's learning rate from --g-lr to LR over --duration (default: constant)",
    )
    g.add_argument("--ema-halflife-kimg", type=float, default=500, help="EMA half-life of G")
    g.add_argument("--ema-rampup", type=float, default=0.05, help="EMA half-life ramp: at most this x images seen")
    g.add_argument(
        "--ema-extra",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=[],
        metavar="H[:R],...",
        help="more EMAs of G to keep beside the main one (half-life kimg H, ramp-up R, default --ema-rampup); "
        "each writes RUN_DIR/ema-Hkimg-rampupR/network-snapshot-*, for comparing averages without another run",
    )
    g.add_argument("--dropout", type=float, default=0.0, help="G's dropout during the fine-tune (the paper: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed for D init, data order, noise and pair order")
    g = p.add_argument_group("I/O")
    g.add_argument("--outdir", default="runs", help="where run dirs are created")
    g.add_argument("--desc", default=None, help="run name suffix (default: data-objective-freeze)")
    g.add_argument("--tick", type=float, default=2, help="kimg between stats lines")
    g.add_argument("--snap", type=int, default=5, help="ticks between snapshots")
    g.add_argument("--snap-minutes", type=float, default=15, help="also snapshot after this many minutes")
    g.add_argument("--grid-size", type=int, default=60, help="images in each sample grid")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its last snapshot")
    g.add_argument("--max-steps", type=int, default=None, help="stop (with a snapshot) after this many steps")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.preset:
        parser.set_defaults(**preset_args(pre.preset))
    args = parser.parse_args(argv)
    if not args.resume and not args.teacher:
        parser.error("--teacher is required (a pre-training run dir or a denoiser model dir)")
    if args.objective != "gan" and not args.pairs and not args.resume:
        parser.error(f"--objective {args.objective} needs --pairs (make them with python -m training.make_pairs)")
    if args.disc_backbone and args.disc == "teacher" and "disc" not in given_options(parser, argv):
        args.disc = "backbone"  # giving a backbone file means using it
    if args.disc == "backbone" and not (args.disc_backbone and args.disc_backbone_config):
        parser.error("--disc backbone needs --disc-backbone FILE.safetensors and --disc-backbone-config FILE.json")
    return parser, args


def run_config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """A new run's config from its arguments (``--desc`` defaults to data-objective-freeze)."""
    return FinetuneConfig.from_options(vars(args))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = init_distributed(args.device)
    try:
        cfg, run_dir = resolve_run_config(parser, args, argv, world, FinetuneConfig)
        task, stream = build_task(cfg, world)
        cfg = task.cfg  # with the teacher's record and the class names
        info = describe(task)
        if run_dir is None:
            run_dir = open_run_dir(cfg, world, info)
        log = RunLog(run_dir if world.is_main else None)
        log(
            f"Run dir: {run_dir}  world size: {world.world_size}  teacher: {cfg.teacher_info['model_dir']}  "
            f"precision: {cfg.precision}  batch per GPU round: {cfg.batch_gpu or cfg.batch // world.world_size}"
        )
        log(
            f"objective {cfg.objective}  disc {cfg.disc}  G {info['generator_parameters']:,} parameters, "
            f"{info['generator_trainable']:,} trainable  D {info.get('discriminator_trainable', 0):,} trainable"
        )
        log(str(task.freeze))
        options = LoopOptions.from_run_config(cfg)
        progress = run_training(
            task, stream, options, world, run_dir, resume=bool(args.resume), max_steps=args.max_steps
        )
        return {"run_dir": str(run_dir), **progress}
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
