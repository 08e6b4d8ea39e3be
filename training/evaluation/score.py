"""Scores of any image set: a folder or .npz of images against a reference (a data set split, another image set,
or a statistics file), in a chosen feature space (``python -m training.evaluate score``); and reference
statistics written once (``python -m training.evaluate ref``).

The paper's protocol is ``protocol="paper"``: 50,000 generated images against the whole training set. The
default compares with the test split (as ``report`` does) and takes any number of images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.classifier import DEFAULT_CLASSIFIER
from training.evaluation.features import (
    FeatureChoice,
    FeatureExtractor,
    build_extractor,
    choose_features,
    extract_features,
)
from training.evaluation.imagesets import ImageSet, RefSpec, open_data, open_images, parse_ref
from training.evaluation.metrics import compare
from training.evaluation.options import Log
from training.evaluation.protocol import (
    DEFAULT_BOOTSTRAP_ROUNDS,
    SEED_RANGES,
    bootstrap_fd,
    bootstrap_rounds,
    describe_seeds,
    seed_range,
    seed_role,
    seeds_record,
)
from training.evaluation.stats import DEFAULT_SUBSET, ReferenceStats, compute_reference_stats

PROTOCOLS = ("default", "paper")
PAPER_SAMPLES = 50000  # the paper's FID protocol: 50k generated images against the training set
_TEST = SEED_RANGES["test"]


@dataclass
class ScoreOptions:
    batch: int = 250
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    subset: int = DEFAULT_SUBSET  # reference feature rows kept for KID and precision/recall
    seed: int = 0  # of the reference subset
    num_real: int | None = None  # reference images from a data set (None: all)
    device: str = "cpu"
    protocol: str = "default"
    seeds: str | None = None  # the seed range the images must come from (None: not checked, only stated)
    bootstrap: int = DEFAULT_BOOTSTRAP_ROUNDS  # rounds of the FD interval (0: none)

    def __post_init__(self) -> None:
        if self.bootstrap != 0 and self.bootstrap < 2:
            raise ValueError("--bootstrap takes 0 (no interval) or at least 2 rounds")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.batch < 1 or self.subset < 2:
            raise ValueError("batch must be >= 1 and the reference subset >= 2")
        if self.protocol == "paper" and self.num_real is not None:
            raise ValueError("the paper's protocol compares with the whole training set: leave out the real count")


@dataclass
class FeatureRequest:
    """The feature space asked for on the command line: a kind (or ``auto``) and where each kind loads from."""

    features: str = "auto"
    classifier: str | None = None  # None: the project's default classifier dir
    teacher: str | None = None
    inception: str | None = None

    def source(self, kind: str) -> str | None:
        """The path given for a kind of features (None where none was given)."""
        return {"classifier": self.classifier, "teacher": self.teacher, "inception": self.inception}.get(kind)

    def choose(self, *, data: str | None, labelled: bool, conditional: bool) -> FeatureChoice:
        return choose_features(
            self.features,
            data=data,
            labelled=labelled,
            conditional=conditional,
            classifier=self.classifier or DEFAULT_CLASSIFIER,
            teacher=self.teacher,
            inception=self.inception,
        )


def reference_split(ref: RefSpec, protocol: str) -> str:
    """The split a data set reference is read from: as named, else train for the paper's protocol, else test."""
    if protocol == "paper":
        if ref.split == "test":
            raise ValueError("the paper's protocol compares with the training set: use --ref SPEC:train")
        return "train"
    return ref.split or "test"


def _extractor(choice: FeatureChoice, options: ScoreOptions, log: Log) -> FeatureExtractor:
    extractor = build_extractor(choice.kind, choice.source, device=options.device)
    log(f"Features: {extractor.description} ({choice.reason}; extractor {extractor.fingerprint[:12]})")
    return extractor


def resolve_reference(
    ref_text: str,
    images: ImageSet,
    request: FeatureRequest,
    options: ScoreOptions,
    data_path: str | None = None,
    log: Log = print,
) -> tuple[ReferenceStats, FeatureExtractor, str]:
    """(reference statistics, the extractor that made them, why that one) for a ``--ref`` argument."""
    ref = parse_ref(ref_text)
    conditional = images.conditional is not False
    if ref.kind == "stats":
        stats = ReferenceStats.load(ref.value)
        if options.protocol == "paper" and stats.data.get("split") != "train":
            raise ValueError(f"{ref.value}: the paper's protocol needs statistics of the training set")
        if request.features != "auto":
            labelled = stats.data.get("num_classes", 0) > 0
            choice = request.choose(data=stats.data.get("spec"), labelled=labelled, conditional=conditional)
        else:  # the extractor the file was made with: from the path given for its kind, else where it was then
            kind = stats.extractor["kind"]
            source = request.source(kind) or stats.extractor.get("source", "")
            choice = FeatureChoice(kind, str(source), f"as in {Path(ref.value).name}")
        extractor = _extractor(choice, options, log)
        stats.check_extractor(extractor, f"the statistics in {ref.value}")
        what = stats.data.get("spec") or stats.data.get("images")
        split = f", {stats.data['split']} split" if stats.data.get("split") else ""
        log(f"Reference: {ref.value} ({stats.stats.count} images of {what}{split})")
        return stats, extractor, choice.reason
    if ref.kind == "images":
        real = open_images(ref.value, channels=images.channels)
        data = None
    else:
        split = reference_split(ref, options.protocol)
        real = open_data(ref.value, split, data_path, images.resolution, images.channels, options.num_real)
        data = ref.value
    choice = request.choose(data=data, labelled=real.num_classes > 0, conditional=conditional)
    extractor = _extractor(choice, options, log)
    log(f"Reference: {real.description} at {real.resolution}x{real.resolution}")
    stats = compute_reference_stats(real, extractor, options.batch, options.subset, options.seed, log)
    return stats, extractor, choice.reason


def images_seeds(images: ImageSet, expected: str | None = None) -> dict[str, Any] | None:
    """What the scores state of the images' noise seeds (None where the set records none); with ``expected`` (a
    role or a start seed), a ValueError unless they are exactly the first ``count`` seeds of that range."""
    seeds = images.seeds
    record = None
    if seeds is not None and len(seeds):
        first, last = int(seeds.min()), int(seeds.max())
        contiguous = bool(np.array_equal(seeds, np.arange(int(seeds[0]), int(seeds[0]) + len(seeds))))
        if contiguous:
            record = {**seeds_record(range(first, last + 1)), "contiguous": True}
        else:
            role = seed_role(range(first, last + 1))
            record = {"role": role, "first": first, "last": last, "count": len(seeds), "contiguous": False}
    if expected is not None:
        want = seed_range(expected, images.count)
        if seeds is None:
            raise ValueError(
                f"{images.description}: records no seeds, so --seeds {expected} cannot be checked (an .npz from "
                "python -m training.generate --npz records them)"
            )
        if not np.array_equal(seeds, np.arange(want.start, want.stop)):
            got = f"seeds {record['first']}-{record['last']}" if record else "no seeds"
            raise ValueError(
                f"{images.description}: made from {got}, not the {describe_seeds(want)}; write them with "
                f"python -m training.generate MODEL --seeds {want.start}-{want.stop - 1} --npz FILE"
            )
    return record


def score_images(
    images: ImageSet, reference: ReferenceStats, extractor: FeatureExtractor, options: ScoreOptions, log: Log = print
) -> dict[str, Any]:
    """Fréchet distance, KID, precision/recall (and class accuracy where the images carry labels the extractor's
    classes can judge) of ``images`` against ``reference``."""
    reference.check_extractor(extractor)
    if options.protocol == "paper" and images.count < PAPER_SAMPLES:
        raise ValueError(
            f"the paper's protocol scores {PAPER_SAMPLES} images; this set holds {images.count} (write them with "
            f"python -m training.generate MODEL --seeds {_TEST.start}-{_TEST.start + PAPER_SAMPLES - 1} --npz FILE, "
            "the test range)"
        )
    seeds = images_seeds(images, options.seeds)
    t0 = time.perf_counter()
    feats, logits, _ = extract_features(images.batches(options.batch), extractor, None, None)
    labels = images.labels
    judged = labels is not None and logits is not None and int(labels.max()) < extractor.num_classes
    metrics = compare(
        reference.features,
        feats,
        logits if judged else None,
        labels if judged else None,
        kid_subsets=options.kid_subsets,
        kid_subset_size=options.kid_subset_size,
        real_stats=reference.stats,
    )
    m = asdict(metrics)
    if options.bootstrap:
        # A statistics file keeps the moments of all its images but only a subset of their rows: the reference
        # is then held fixed and only the images are resampled.
        fixed = reference.stats if reference.stats.count > len(reference.features) else None
        real_rows = len(feats) if fixed else len(reference.features)  # fixed: one covariance per round
        rounds = bootstrap_rounds(options.bootstrap, real_rows, len(feats), feats.shape[1])
        ci = bootstrap_fd(reference.features, feats, rounds=rounds, seed=0, real_stats=fixed)
        m["fd_ci"] = {**ci.to_json(), "resampled": "images" if fixed else "images and reference"}
    log(
        f"{images.description}: {extractor.metric_name} {m['fd']:.4g}, KID {m['kid'] * 1e3:.4g}e-3, "
        f"precision {m['precision']:.3f}, recall {m['recall']:.3f}"
        + (f", class accuracy {m['class_accuracy']:.4f}" if m["class_accuracy"] is not None else "")
    )
    return {
        "metric_name": extractor.metric_name,
        **m,
        "images": {**images.record, "resolution": images.resolution, "channels": images.channels},
        "reference": dict(reference.data),
        "features": extractor.to_json(),
        "protocol": options.protocol,
        "seeds": seeds,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_score(
    images_path: str,
    ref: str,
    request: FeatureRequest | None = None,
    options: ScoreOptions | None = None,
    data_path: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """``score``: the images at ``images_path`` against ``ref``; returns the scores (what ``--out`` holds)."""
    request = request or FeatureRequest()
    options = options or ScoreOptions()
    images = open_images(images_path)
    log(f"Images: {images.description} at {images.resolution}x{images.resolution}")
    reference, extractor, reason = resolve_reference(ref, images, request, options, data_path, log)
    result = score_images(images, reference, extractor, options, log)
    result["features"]["reason"] = reason
    return result


def write_reference_stats(
    data: str,
    split: str,
    out: str | Path,
    request: FeatureRequest | None = None,
    options: ScoreOptions | None = None,
    data_path: str | None = None,
    resolution: int | None = None,
    log: Log = print,
) -> ReferenceStats:
    """``ref``: statistics of a data set split (or a folder / .npz of images) in the chosen feature space."""
    request = request or FeatureRequest()
    options = options or ScoreOptions()
    spec = parse_ref(data)
    if spec.kind == "stats":
        raise ValueError(f"{data}: already a statistics file")
    if spec.kind == "images":
        real, name = open_images(spec.value, resolution=resolution), None
    else:
        real = open_data(spec.value, split, data_path, resolution, None, options.num_real)
        name = spec.value
    choice = request.choose(data=name, labelled=real.num_classes > 0, conditional=True)
    extractor = _extractor(choice, options, log)
    log(f"Reference: {real.description} at {real.resolution}x{real.resolution}")
    stats = compute_reference_stats(real, extractor, options.batch, options.subset, options.seed, log)
    stats.save(out)
    log(
        f"Wrote {out}: {stats.stats.count} images, {extractor.metric_name} space ({extractor.feature_dim}-d), "
        f"{len(stats.features)} feature rows kept"
    )
    return stats
