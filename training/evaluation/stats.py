"""Reference statistics files: a real image set's features, summarised once and compared with many sample sets.

``python -m training.evaluate ref --data SPEC --split train --out stats.npz`` writes one; ``score --ref stats.npz``
reads it. The file (``np.savez``, no pickles) holds the features' mean ``mu`` and covariance ``sigma`` over every
image (Fréchet distance), a fixed, seeded subset of the feature rows ``features`` (KID and precision/recall need
rows, not moments) and ``meta``, a JSON string: the feature extractor (kind, metric name, fingerprint), the data set
and split, the image size and counts. Statistics from another extractor than the one scoring are refused: their
feature spaces differ, so any distance between them is meaningless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.evaluation.features import FeatureExtractor
from training.evaluation.imagesets import ImageSet
from training.evaluation.metrics import FeatureStats
from training.evaluation.options import Log

FORMAT = "onestep-reference-stats"
FORMAT_VERSION = 1
DEFAULT_SUBSET = 10000  # feature rows kept for KID and precision/recall


class ExtractorMismatch(ValueError):
    """Statistics computed in another feature space than the one asked for."""


class MomentAccumulator:
    """Mean and covariance of feature rows fed in batches (Chan et al.'s pairwise update, in float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mean_b = x.mean(axis=0)
        centered = x - mean_b
        m2_b = centered.T @ centered
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        delta = mean_b - self.mean
        total = self.n + nb
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * nb / total)
        self.n = total

    def stats(self) -> FeatureStats:
        if self.mean is None or self.m2 is None or self.n < 2:
            raise ValueError("need at least 2 images for a covariance")
        return FeatureStats(mu=self.mean, sigma=self.m2 / (self.n - 1), count=self.n)


@dataclass
class ReferenceStats:
    """Moments over every reference image, a fixed subset of their feature rows, and what they were made from."""

    stats: FeatureStats
    features: np.ndarray  # [S, D]
    extractor: dict[str, Any]  # FeatureExtractor.to_json()
    data: dict[str, Any]  # the image set's record, its size and channels

    @property
    def fingerprint(self) -> str:
        return str(self.extractor["fingerprint"])

    def check_extractor(self, extractor: FeatureExtractor, source: str = "reference statistics") -> None:
        """Refuse statistics from another feature space than ``extractor``'s."""
        if extractor.fingerprint != self.fingerprint:
            theirs = f"{self.extractor.get('kind')} `{self.extractor.get('source')}` ({self.fingerprint[:12]})"
            ours = f"{extractor.kind} `{extractor.source}` ({extractor.fingerprint[:12]})"
            raise ExtractorMismatch(
                f"{source} were computed with the features of {theirs}, but this run uses {ours}: distances across "
                "feature spaces mean nothing. Use the same extractor, or write new statistics with "
                "`python -m training.evaluate ref`."
            )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "extractor": self.extractor, "data": self.data}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            mu=self.stats.mu,
            sigma=self.stats.sigma,
            count=np.int64(self.stats.count),
            features=self.features.astype(np.float32),
            meta=np.asarray(json.dumps(meta)),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such statistics file")
        with np.load(path, allow_pickle=False) as f:
            missing = {"mu", "sigma", "count", "features", "meta"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: not a reference statistics file (missing {sorted(missing)})")
            meta = json.loads(str(f["meta"]))
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: not a version {FORMAT_VERSION} {FORMAT} file")
            stats = FeatureStats(
                mu=f["mu"].astype(np.float64), sigma=f["sigma"].astype(np.float64), count=int(f["count"])
            )
            features = f["features"].astype(np.float64)
        return cls(stats=stats, features=features, extractor=meta["extractor"], data=meta["data"])


def compute_reference_stats(
    images: ImageSet,
    extractor: FeatureExtractor,
    batch: int = 250,
    subset: int = DEFAULT_SUBSET,
    seed: int = 0,
    log: Log = print,
) -> ReferenceStats:
    """Moments of every image's features and a seeded subset of ``subset`` feature rows, in random order."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(images.count, dtype=bool)
    keep[rng.choice(images.count, min(subset, images.count), replace=False)] = True
    moments = MomentAccumulator()
    rows: list[np.ndarray] = []
    start = 0
    with torch.no_grad():
        for x in images.batches(batch):
            f = extractor(x)[0].double().cpu().numpy()
            moments.update(f)
            rows.append(f[keep[start : start + len(f)]])
            if log is not None and (start + len(f)) // 10000 > start // 10000:
                log(f"  {start + len(f)}/{images.count} images")
            start += len(f)
    data = {**images.record, "resolution": images.resolution, "channels": images.channels}
    data["num_classes"] = images.num_classes
    data["subset"] = int(keep.sum())
    data["subset_seed"] = seed
    kept = np.concatenate(rows)
    # Shuffled, so that any leading rows are a uniform sample too (a folder lists its images class by class).
    return ReferenceStats(moments.stats(), kept[rng.permutation(len(kept))], extractor.to_json(), data)
