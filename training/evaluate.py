"""Evaluate generators, teachers and any image set against real data: ``python -m training.evaluate``.

Commands:

- ``report`` (the default): sample every ``--model`` (a generator in one step; a denoiser with Heun at each
  ``--nfe``) from the same seeded noise and balanced classes, compare with the real test set, and write
  ``report.md``, ``metrics.json`` and PNG plots into ``--out``. A fine-tune run dir also gives the budget curve:
  FD and recall against fine-tune images seen (and their share of the teacher's pre-training images), read from
  its ``network-snapshot-*`` model dirs, with where it reaches the teacher's best FD at any NFE.
  ``--model NAME=DIR,DIR,DIR`` evaluates the fine-tune seeds of one variant and reports each metric as
  mean ± sd over them, with every seed's figure (never the best seed alone).
- ``score``: any image set (a folder of images or an .npz, e.g. from ``python -m training.generate``) against a
  reference: a data set and split (``fmnist:test``), a folder, or a statistics file from ``ref``.
- ``ref``: reference statistics of a data set split, written once (``stats.npz``) and compared with many sets.
- ``combine``: the fine-tune seeds of a variant measured by separate ``report`` runs (other sessions or
  machines), reported together as mean ± sd from their ``metrics.json``, as one ``report`` would; nothing is
  measured again, and reports that measured something else are refused.
- ``train-classifier``: train the evaluation classifier whose penultimate layer is the feature space of
  FD / KID / precision-recall on a labelled data set (saved as ``config.json`` + ``classifier.safetensors``).

Features (``--features``): the evaluation classifier for class-conditional models on labelled data; the teacher's
encoder (``--teacher``) or Inception-v3 from a local weights file (``--inception``) where no labels are to be had.
Protocol (``training.evaluation.protocol``): noise seeds come in disjoint ranges by role. ``--seeds test`` (the
default: seeds 200000-249999, the first 10,000 per set unless ``--num-samples`` says otherwise) for every figure
that is reported, ``--seeds validation`` (100000-149999) for every choice (snapshot, fine-tune seed,
hyper-parameter), or ``--seeds START`` for quick looks; a count past the range is refused. FD comes with a 95%
percentile bootstrap interval (``--bootstrap`` rounds). ``score --seeds ROLE`` checks that an .npz's images come
from that range. ``--protocol paper`` is the paper's: 50,000 samples against the training set. This module
parses the arguments; the work is done by ``training.evaluation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError
from training.cli import HelpFormatter
from training.datasets import DatasetError
from training.evaluation.classifier import DEFAULT_CLASSIFIER, TrainOptions, train_classifier_dir
from training.evaluation.combine import combine_reports, parse_group
from training.evaluation.features import KINDS
from training.evaluation.options import DEFAULT_NFE, EvalOptions, Log
from training.evaluation.pipeline import run_evaluation
from training.evaluation.protocol import DEFAULT_BOOTSTRAP_ROUNDS, DEFAULT_REPORTED_SAMPLES, SEED_RANGES
from training.evaluation.sample_cache import DEFAULT_CACHE_DIR
from training.evaluation.score import (
    PAPER_SAMPLES,
    PROTOCOLS,
    FeatureRequest,
    ScoreOptions,
    run_score,
    write_reference_stats,
)
from training.evaluation.sources import resolve_sources
from training.evaluation.stats import DEFAULT_SUBSET

COMMANDS = ("report", "score", "ref", "combine", "train-classifier")
DEFAULT_SAMPLES = DEFAULT_REPORTED_SAMPLES
_TEST, _VAL = SEED_RANGES["test"], SEED_RANGES["validation"]
SEEDS_HELP = (
    f"noise seeds: test (reported figures; {_TEST.start}-{_TEST.stop - 1}), validation (choices; {_VAL.start}-"
    f"{_VAL.stop - 1}) or a start seed; sample i uses the i-th seed"
)


def _number_list(kind: type, noun: str) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values of ``kind`` (int, float), at least one."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}s, got {text!r}") from e
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {noun}")
        return values

    return parse


_int_list = _number_list(int, "integer")
_float_list = _number_list(float, "number")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _feature_options(p: argparse.ArgumentParser, classifier_default: str | None) -> None:
    g = p.add_argument_group("features")
    g.add_argument(
        "--features",
        default="auto",
        choices=("auto", *KINDS),
        help="feature space: auto takes the evaluation classifier for class-conditional models on labelled data "
        "it was trained on, else the teacher's encoder (--teacher) or Inception (--inception), which need no labels",
    )
    text = "evaluation classifier dir" + ("" if classifier_default else f" (default: {DEFAULT_CLASSIFIER})")
    g.add_argument("--classifier", default=classifier_default, metavar="DIR", help=text)
    g.add_argument("--teacher", default=None, metavar="DIR", help="teacher run dir or denoiser model dir whose "
                   "encoder gives label-free features")  # fmt: skip
    g.add_argument(
        "--inception",
        default=None,
        metavar="FILE",
        help="local Inception-v3 FID weights (.pth state dict or .safetensors); never downloads",
    )


def _run_options(p: argparse.ArgumentParser, batch: int = 250) -> None:
    p.add_argument("--batch", type=int, default=batch, help="images per forward pass")
    p.add_argument("--device", default=_device(), help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate one-step generators and teachers (report, the default command), score any image set "
        "(score), write reference statistics (ref) or train the evaluation classifier (train-classifier).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    fmt = HelpFormatter

    r = sub.add_parser("report", help="evaluate models into report.md, metrics.json and plots", formatter_class=fmt)
    r.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[LABEL=]PATH",
        help="model dir or run dir (repeatable); generators are sampled in one step, denoisers with Heun at --nfe; "
        "a fine-tune run dir also gives the budget curve of its snapshots; NAME=DIR,DIR,DIR: fine-tune seeds of "
        "one variant, reported as mean ± sd with every seed's figure",
    )
    r.add_argument("--out", required=True, help="output dir")
    r.add_argument("--data", default=None, help="reference data set spec (default: the first model's dataset.spec)")
    r.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    r.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"samples per set (default: {DEFAULT_SAMPLES}; {PAPER_SAMPLES} under --protocol paper); "
        "small counts are for quick looks, not for reported figures",
    )
    r.add_argument("--num-real", type=int, default=None, help="reference images (default: all)")
    r.add_argument("--seeds", default="test", metavar="ROLE|START", help=SEEDS_HELP)
    r.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP_ROUNDS,
        metavar="ROUNDS",
        help="bootstrap rounds of each FD's 95%% interval (0: none; fewer where a round costs much)",
    )
    r.add_argument(
        "--nfe", type=_int_list, default=",".join(map(str, DEFAULT_NFE)), help="Heun NFEs for denoisers (odd)"
    )
    r.add_argument("--no-curve", action="store_true", help="skip the snapshots of fine-tune run dirs")
    r.add_argument("--curve-samples", type=int, default=None, help="samples per snapshot (default: --num-samples)")
    r.add_argument(
        "--curve-kimg",
        type=_float_list,
        default=None,
        metavar="KIMG,...",
        help="curve points: the snapshots nearest these fine-tune kimg, e.g. 6,12,30,60,120 (default: every snapshot)",
    )
    r.add_argument(
        "--teacher-metrics",
        default=None,
        metavar="METRICS_JSON",
        help="where no teacher is evaluated in this run: the budget curves' target is the teacher's best in this "
        "earlier report (same seeds, samples, features and reference, or a clear refusal)",
    )
    r.add_argument(
        "--sample-cache",
        default=DEFAULT_CACHE_DIR,
        metavar="DIR",
        help="keep multi-step teachers' sample sets here, keyed by weights, NFE, seeds and classes, and reuse them",
    )
    r.add_argument("--no-sample-cache", action="store_true", help="generate every teacher set anew, store nothing")
    r.add_argument("--kid-subsets", type=int, default=100, help="random subsets KID averages over")
    r.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset")
    r.add_argument(
        "--protocol",
        default="default",
        choices=PROTOCOLS,
        help=f"paper: {PAPER_SAMPLES} samples per set against the whole train split (the real floor then comes "
        "from the test split); default: --num-samples against the test split",
    )
    _feature_options(r, DEFAULT_CLASSIFIER)
    _run_options(r)

    s = sub.add_parser(
        "score",
        help="score a folder or .npz of images against a data set, a folder or a statistics file",
        formatter_class=fmt,
    )
    s.add_argument("--images", required=True, metavar="DIR|FILE.npz", help="the images to score")
    s.add_argument(
        "--ref",
        required=True,
        metavar="REF",
        help="SPEC[:SPLIT] (fmnist:test, cifar10:DIR:train; the split defaults to test, or train under "
        "--protocol paper), a folder or .npz of real images, or a statistics file written by the ref command",
    )
    s.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    s.add_argument("--num-real", type=int, default=None, help="reference images from a data set (default: all)")
    s.add_argument("--protocol", default="default", choices=PROTOCOLS, help=f"paper: at least {PAPER_SAMPLES} "
                   "images against the training set")  # fmt: skip
    s.add_argument("--subset", type=int, default=DEFAULT_SUBSET, help="reference feature rows for KID and PR")
    s.add_argument("--kid-subsets", type=int, default=100, help="random subsets KID averages over")
    s.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset")
    s.add_argument(
        "--seeds",
        default=None,
        metavar="ROLE|START",
        help="check that the images' seeds (an .npz from training.generate) are the first of this range "
        "(test, validation or a start seed); the scores state the seeds either way",
    )
    s.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP_ROUNDS,
        metavar="ROUNDS",
        help="bootstrap rounds of the FD's 95%% interval (0: none)",
    )
    s.add_argument("--out", default=None, metavar="FILE.json", help="also write the scores here")
    _feature_options(s, None)
    _run_options(s)

    f = sub.add_parser("ref", help="write reference statistics of a data set split once", formatter_class=fmt)
    f.add_argument("--data", required=True, help="data set spec (fmnist, cifar10:DIR, a folder, ...) or image .npz")
    f.add_argument("--split", default="train", choices=("train", "test"), help="split of the data set")
    f.add_argument("--out", required=True, metavar="FILE.npz", help="statistics file to write")
    f.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    f.add_argument("--resolution", type=int, default=None, help="resize images to this size (default: native)")
    f.add_argument("--num-real", type=int, default=None, help="images to use (default: all)")
    f.add_argument("--subset", type=int, default=DEFAULT_SUBSET, help="feature rows kept for KID and PR")
    f.add_argument("--seed", type=int, default=0, help="seed of the kept subset")
    _feature_options(f, None)
    _run_options(f)

    c = sub.add_parser(
        "combine",
        help="report fine-tune seeds measured by separate report runs as mean ± sd (nothing measured again)",
        formatter_class=fmt,
    )
    c.add_argument(
        "--group",
        action="append",
        required=True,
        metavar="NAME=REPORT[#LABEL],...",
        help="one variant's fine-tune seeds (repeatable): a report dir or metrics.json per seed, with #LABEL "
        "where that report holds more than one one-step figure",
    )
    c.add_argument("--teacher-metrics", default=None, metavar="REPORT", help="a report whose teacher figures "
                   "come along, so that each variant's mean is compared with the teacher's best")  # fmt: skip
    c.add_argument("--out", required=True, help="output dir")

    t = sub.add_parser("train-classifier", help="train the evaluation classifier", formatter_class=fmt)
    t.add_argument("--data", default="fmnist", help="labelled data set spec")
    t.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    t.add_argument("--out", default=DEFAULT_CLASSIFIER, help="output dir")
    t.add_argument("--force", action="store_true", help="replace a classifier already in --out")
    t.add_argument("--epochs", type=int, default=TrainOptions.epochs, help="passes over the train split")
    t.add_argument("--batch", type=int, default=TrainOptions.batch_size, help="images per step")
    t.add_argument("--lr", type=float, default=TrainOptions.lr, help="peak AdamW learning rate (one-cycle)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, order and augmentation")
    t.add_argument("--no-flip", action="store_true", help="no horizontal flips (use for digits or text)")
    t.add_argument("--shift", type=int, default=TrainOptions.shift, help="random translation in pixels")
    t.add_argument("--widths", type=_int_list, default="16,32,64", help="channels per stage")
    t.add_argument("--blocks", type=_int_list, default="1,1,1", help="residual blocks per stage")
    t.add_argument("--feature-dim", type=int, default=128, help="feature space dimension")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    t.add_argument("--init", default=None, help="continue training from this classifier dir")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
    return train_classifier_dir(args.data, args.data_path, args.out, options, log=log, force=args.force)


def _request(args: argparse.Namespace) -> FeatureRequest:
    return FeatureRequest(args.features, args.classifier, args.teacher, args.inception)


def _log(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> None:
    num_samples, split = args.num_samples or DEFAULT_SAMPLES, "test"
    if args.protocol == "paper":
        if args.num_samples not in (None, PAPER_SAMPLES):
            raise ValueError(f"--protocol paper samples {PAPER_SAMPLES} images per set; leave out --num-samples")
        num_samples, split = PAPER_SAMPLES, "train"
    options = EvalOptions(
        num_samples=num_samples,
        batch=args.batch,
        seeds=args.seeds,
        nfe=args.nfe,
        num_real=args.num_real,
        curve=not args.no_curve,
        curve_samples=args.curve_samples,
        curve_kimg=args.curve_kimg,
        teacher_metrics=args.teacher_metrics,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        bootstrap=args.bootstrap,
        device=args.device,
        reference_split=split,
        sample_cache=None if args.no_sample_cache else args.sample_cache,
    )
    sources = [src for spec in args.model for src in resolve_sources(spec)]
    labels = [src.label for src in sources]
    if len(set(labels)) < len(labels):
        raise ValueError(f"two --model entries share a label ({', '.join(labels)}); name them with LABEL=PATH")
    run_evaluation(
        sources,
        args.out,
        args.classifier,
        args.data,
        args.data_path,
        options,
        args.inception,
        features=args.features,
        teacher=args.teacher,
    )


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    options = ScoreOptions(
        batch=args.batch,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        subset=args.subset,
        num_real=args.num_real,
        device=args.device,
        protocol=args.protocol,
        seeds=args.seeds,
        bootstrap=args.bootstrap,
    )
    result = run_score(args.images, args.ref, _request(args), options, args.data_path, log=_log)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


def cmd_ref(args: argparse.Namespace) -> None:
    options = ScoreOptions(batch=args.batch, subset=args.subset, seed=args.seed, num_real=args.num_real,
                           device=args.device)  # fmt: skip
    write_reference_stats(
        args.data, args.split, args.out, _request(args), options, args.data_path, args.resolution, log=_log
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["report", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command == "train-classifier":
            cmd_train_classifier(args)
        elif args.command == "score":
            cmd_score(args)
        elif args.command == "ref":
            cmd_ref(args)
        elif args.command == "combine":
            combine_reports([parse_group(g) for g in args.group], args.out, args.teacher_metrics, log=_log)
        else:
            cmd_report(args)
    except (CheckpointError, DatasetError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
