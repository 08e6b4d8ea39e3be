"""``python -m training.make_pairs``: precompute (noise, teacher output) pairs for the distillation baseline.

The format and the resumable writer are in ``training.pairs``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from training.cli import HelpFormatter
from training.pairs import make_pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.make_pairs",
        description="Precompute teacher (noise -> Heun output) pairs for the distillation baseline; resumable.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--teacher", required=True, help="teacher run dir or denoiser model dir")
    p.add_argument("--num", type=int, required=True, help="number of pairs")
    p.add_argument("--out", required=True, help="output dir (rerun the same command to continue)")
    p.add_argument("--nfe", type=int, default=35, help="teacher network evaluations per pair")
    p.add_argument("--solver", default="heun", choices=["heun", "euler"], help="teacher ODE solver")
    p.add_argument("--chunk", type=int, default=1000, help="pairs per chunk file")
    p.add_argument("--batch", type=int, default=64, help="sampling batch size")
    p.add_argument("--seed-start", type=int, default=0, help="pair i uses seed seed_start + i")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return make_pairs(
        args.teacher,
        args.num,
        args.out,
        nfe=args.nfe,
        solver=args.solver,
        chunk=args.chunk,
        batch=args.batch,
        seed_start=args.seed_start,
        device=device,
    )


if __name__ == "__main__":
    main()
