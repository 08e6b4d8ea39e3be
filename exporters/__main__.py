"""``python -m exporters {onnx,tensorrt,triton} --model MODEL_DIR ...``: thin CLI over the exporter functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exporters.parity import ParityError
from training.checkpoint import CheckpointError
from training.cli import HelpFormatter


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", type=Path, help="model dir (same as --model)")
    p.add_argument("--model", type=Path, help="model dir holding config.json + generator.safetensors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporters", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fmt = HelpFormatter
    p = sub.add_parser("onnx", help="export model.onnx (checked, parity against PyTorch printed)", formatter_class=fmt)
    _model_arg(p)
    p.add_argument("--out", type=Path, help="output file (default: MODEL_DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="U-Net precision inside the graph (fp16/bf16 for strongly typed TensorRT builds)",
    )
    p.add_argument("--no-uint8", action="store_true", help="leave out the uint8 NHWC output")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument(
        "--parity-batches",
        type=lambda s: [int(b) for b in s.split(",")],
        default="1,7,64",
        help="batch sizes the parity check runs, comma-separated",
    )

    p = sub.add_parser(
        "tensorrt", help="build model.plan + sidecar (needs TensorRT and a CUDA GPU)", formatter_class=fmt
    )
    _model_arg(p)
    p.add_argument("--out", type=Path, help="output plan (default: MODEL_DIR/model.plan)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16", help="engine precision")
    p.add_argument(
        "--typing",
        choices=["auto", "weak", "strong"],
        default="auto",
        help="weak: fp32 graph + builder flags (TensorRT 10); strong: graph exported in --precision",
    )
    p.add_argument(
        "--profile",
        action="append",
        default=None,
        metavar="MIN:OPT:MAX",
        help="batch optimization profile; repeat per bucket (default: 1:32:64; opt = the service's max batch)",
    )
    p.add_argument("--timing-cache", type=Path, help="timing cache file (default: beside the plan)")
    p.add_argument("--no-parity", action="store_true", help="skip the TensorRT vs ONNX Runtime check")

    p = sub.add_parser("triton", help="write a Triton model repository", formatter_class=fmt)
    _model_arg(p)
    p.add_argument("--repo", type=Path, required=True, help="model repository root to write into")
    p.add_argument("--name", help="model name in the repository (default: the model's name)")
    p.add_argument(
        "--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime", help="Triton backend that runs it"
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="largest batch Triton's dynamic batcher forms")
    p.add_argument(
        "--preferred",
        type=lambda s: [int(b) for b in s.split(",")],
        default=None,
        help="preferred batch sizes, comma-separated (default: powers of two from 8)",
    )
    p.add_argument("--queue-delay-us", type=int, default=5000, help="longest wait for a fuller batch, microseconds")
    p.add_argument("--max-queue-size", type=int, default=256, help="queued requests beyond which Triton rejects")
    p.add_argument("--instances", type=int, default=1, help="model instances")
    p.add_argument(
        "--kind",
        choices=["KIND_CPU", "KIND_GPU", "KIND_AUTO"],
        default=None,
        help="where instances run (default: KIND_GPU for tensorrt, else KIND_CPU)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per instance (default: its own choice)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = args.model or args.model_dir
    if model_dir is None:
        build_parser().error("a model dir is required (--model MODEL_DIR)")
    # Progress and the parity table go to stderr; the output path alone goes to stdout.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("exporters")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if args.command == "onnx":
            from exporters.onnx import export_onnx

            out = export_onnx(
                model_dir,
                args.out,
                opset=args.opset,
                uint8_output=not args.no_uint8,
                check_parity=not args.no_parity,
                precision=args.precision,
                parity_batches=args.parity_batches,
            )
        elif args.command == "tensorrt":
            from exporters.tensorrt import Profile, export_tensorrt

            profiles = [Profile.parse(p) for p in (args.profile or ["1:32:64"])]
            out = export_tensorrt(
                model_dir,
                args.out,
                precision=args.precision,
                typing=args.typing,
                profiles=profiles,
                timing_cache=args.timing_cache,
                check_parity=not args.no_parity,
            )
        else:
            from exporters.triton import BatchingConfig, InstanceConfig, write_triton_repo

            batching = BatchingConfig(
                max_batch_size=args.max_batch_size,
                preferred_batch_sizes=args.preferred,
                max_queue_delay_us=args.queue_delay_us,
                max_queue_size=args.max_queue_size,
            )
            kind = args.kind or ("KIND_GPU" if args.backend == "tensorrt" else "KIND_CPU")
            out = write_triton_repo(
                model_dir,
                args.repo,
                name=args.name,
                backend=args.backend,
                batching=batching,
                instances=InstanceConfig(count=args.instances, kind=kind),
                intra_op_threads=args.intra_op_threads,
            )
    except (CheckpointError, ParityError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
