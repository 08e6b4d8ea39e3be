"""Evaluate one-step generators and their teachers against real data: ``python -m training.evaluate``.

Two commands:

- ``train-classifier``: train the evaluation classifier whose penultimate layer is the feature space of
  FD / KID / precision-recall (saved as ``config.json`` + ``classifier.safetensors``);
- ``report`` (the default): sample every ``--model`` (a generator in one step; a denoiser with Heun at each
  ``--nfe``) from the same seeded noise and balanced classes, compare with the real test set, and write
  ``report.md``, ``metrics.json`` and PNG plots into ``--out``. A fine-tune run dir also gives FD against
  fine-tune images seen, read from its ``network-snapshot-*`` model dirs.

This module parses the arguments; the work is done by ``training.evaluation``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from training.checkpoint import CheckpointError
from training.evaluation.classifier import DEFAULT_CLASSIFIER, TrainOptions, train_classifier_dir
from training.evaluation.options import DEFAULT_NFE, EvalOptions, Log
from training.evaluation.pipeline import run_evaluation
from training.evaluation.sources import resolve_source


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate one-step generators and teachers (report, the default command) or train the "
        "evaluation classifier (train-classifier).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    r = sub.add_parser("report", help="evaluate models into report.md, metrics.json and plots", formatter_class=fmt)
    r.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[LABEL=]PATH",
        help="model dir or run dir (repeatable); generators are sampled in one step, denoisers with Heun at --nfe; "
        "a fine-tune run dir also gives the FD-versus-images curve of its snapshots",
    )
    r.add_argument("--out", required=True, help="output dir")
    r.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="evaluation classifier dir")
    r.add_argument("--data", default=None, help="reference data set spec (default: the first model's dataset.spec)")
    r.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    r.add_argument("--num-samples", type=int, default=10000, help="samples per set")
    r.add_argument("--num-real", type=int, default=None, help="reference test images (default: all)")
    r.add_argument("--batch", type=int, default=250, help="images per forward pass")
    r.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED+i")
    r.add_argument("--nfe", type=_int_list, default=DEFAULT_NFE, help="Heun NFEs for denoisers (odd)")
    r.add_argument("--no-curve", action="store_true", help="skip the snapshots of fine-tune run dirs")
    r.add_argument("--curve-samples", type=int, default=None, help="samples per snapshot (default: --num-samples)")
    r.add_argument("--kid-subsets", type=int, default=100)
    r.add_argument("--kid-subset-size", type=int, default=1000)
    r.add_argument(
        "--inception",
        default=None,
        metavar="FILE",
        help="local Inception-v3 FID weights (.pth state dict or .safetensors): adds Inception FID; never downloads",
    )
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    t = sub.add_parser("train-classifier", help="train the evaluation classifier", formatter_class=fmt)
    t.add_argument("--data", default="fmnist", help="data set spec")
    t.add_argument("--data-path", default=None)
    t.add_argument("--out", default=DEFAULT_CLASSIFIER, help="output dir")
    t.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    t.add_argument("--batch", type=int, default=TrainOptions.batch_size)
    t.add_argument("--lr", type=float, default=TrainOptions.lr)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-flip", action="store_true", help="no horizontal flips (use for digits or text)")
    t.add_argument("--shift", type=int, default=TrainOptions.shift, help="random translation in pixels")
    t.add_argument("--widths", type=_int_list, default=(16, 32, 64), help="channels per stage")
    t.add_argument("--blocks", type=_int_list, default=(1, 1, 1), help="residual blocks per stage")
    t.add_argument("--feature-dim", type=int, default=128, help="feature space dimension")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    t.add_argument("--init", default=None, help="continue training from this classifier dir")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def cmd_train_classifier(args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        flip=not args.no_flip,
        shift=args.shift,
        max_steps=args.max_steps,
        arch=dict(widths=args.widths, blocks=args.blocks, feature_dim=args.feature_dim),
        init=args.init,
    )
    return train_classifier_dir(args.data, args.data_path, args.out, options, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("report", "train-classifier", "-h", "--help"):
        argv = ["report", *argv]
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "train-classifier":
            cmd_train_classifier(args)
            return 0
        options = EvalOptions(
            num_samples=args.num_samples,
            batch=args.batch,
            seed=args.seed,
            nfe=args.nfe,
            num_real=args.num_real,
            curve=not args.no_curve,
            curve_samples=args.curve_samples,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            device=args.device,
        )
        sources = [resolve_source(s) for s in args.model]
        run_evaluation(sources, args.out, args.classifier, args.data, args.data_path, options, args.inception)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
