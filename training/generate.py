"""Generate images without a server: ``python -m training.generate MODEL --seeds 0-63 --outdir out``.

MODEL is a one-step generator model dir (one network evaluation per image), a teacher (a pre-training run dir or
a denoiser model dir, ours or one ``python -m training.import_edm`` wrote) sampled at ``--nfe`` evaluations, or a
fine-tune run dir (its latest snapshot). Image i depends only on its seed and class, so a seed gives the same
pixels here as from the service's ``POST /v1/generate``. The work is done by ``training.generation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from training.checkpoint import CheckpointError
from training.cli import HelpFormatter
from training.generation import OneStepPipeline, generate_to_files, parse_seeds
from training.sampling import SOLVERS


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.generate",
        description="Generate images from a one-step generator, or from a teacher at a chosen number of network "
        "evaluations, into PNG files, one .npz and/or a grid.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model dir (generator or denoiser) or run dir")
    p.add_argument("--seeds", type=_seeds, default="0-63", metavar="LIST", help="seeds, e.g. 0-63,100-109 (inclusive)")
    p.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        metavar="C",
        help="class of every image (default: a class drawn from each image's seed, as the service draws it)",
    )
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--nfe",
        type=int,
        default=None,
        help="network evaluations per image for a teacher (default: 35, Heun's 18 steps)",
    )
    p.add_argument("--solver", default="heun", choices=SOLVERS, help="sampler for a teacher")
    p.add_argument("--outdir", default=None, help="write one PNG per image, named by its seed")
    p.add_argument("--subdirs", action="store_true", help="one subfolder per thousand seeds in --outdir")
    p.add_argument("--npz", default=None, metavar="FILE", help="write images (uint8 NHWC), labels and seeds here")
    p.add_argument("--grid", default=None, metavar="FILE.png", help="write a grid of the first images here")
    p.add_argument("--grid-max", type=int, default=256, help="images in the --grid")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the [train] extra; without it, no bar
        return None, lambda: None
    bar = tqdm(total=total, unit="img", desc="generating", file=sys.stderr)
    return bar.update, bar.close


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.outdir is None and args.npz is None and args.grid is None:
        parser.error("nothing to write: give --outdir, --npz and/or --grid")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.subdirs and args.outdir is None:
        parser.error("--subdirs needs --outdir")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = OneStepPipeline.from_pretrained(args.model, device=args.device, nfe=args.nfe, solver=args.solver)
        print(pipe.describe(), file=sys.stderr)
        update, close = _progress_bar(len(args.seeds), not args.no_progress)
        try:
            summary = generate_to_files(
                pipe,
                args.seeds,
                args.class_label,
                batch_size=args.batch,
                outdir=args.outdir,
                subdirs=args.subdirs,
                npz=args.npz,
                grid=args.grid,
                grid_max=args.grid_max,
                progress=update,
            )
        finally:
            close()
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
