"""The evaluator: the reference features, and one sample set measured against them (``SetResult``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from training.evaluation.features import FeatureExtractor, extract_features
from training.evaluation.metrics import FeatureStats, SetMetrics, compare, frechet_distance_stats
from training.evaluation.options import EvalOptions, Log
from training.evaluation.protocol import Interval, bootstrap_fd, bootstrap_rounds, seeds_record
from training.evaluation.spectra import SpectrumAccumulator


@dataclass
class SetResult:
    label: str
    kind: str  # 'real' | 'teacher' | 'one-step'
    nfe: int | None
    images_seen: int | None
    metrics: SetMetrics
    seconds: float
    source: str = ""
    fid: float | None = None
    seeds: dict[str, Any] | None = None  # protocol.seeds_record of the noise seeds (None: real images)
    fd_ci: dict[str, Any] | None = None  # protocol.Interval.to_json of FD (None: not computed)
    group: str | None = None  # the variant this set is one fine-tune seed of (--model NAME=DIR,DIR,...)
    run_seed: int | None = None  # that fine-tune run's --seed, where its run dir records it

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "metrics"}
        out.update(asdict(self.metrics))
        out["images_per_s"] = round(self.metrics.count / self.seconds, 2) if self.seconds > 0 else None
        return out


class Evaluator:
    """Holds the reference features and measures sample sets against them in ``extractor``'s feature space
    (plus Inception's, for an FID column, where ``inception`` is given; by class, where ``reference_labels``
    are given and the samples are conditional)."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: torch.Tensor,
        options: EvalOptions,
        reference_grid: torch.Tensor | None = None,
        inception: FeatureExtractor | None = None,
        log: Log = print,
        reference_labels: torch.Tensor | None = None,
    ):
        self.extractor = extractor
        self.real_labels = reference_labels  # for precision and recall by class (None: overall figures only)
        self.options = options
        self.inception = inception
        self.log = log
        self.real_spectrum = SpectrumAccumulator()
        self.real_features, _, self.real_inception = self._features(iter(self._chunks(reference)), self.real_spectrum)
        self.real_grid = reference[: options.grid] if reference_grid is None else reference_grid[: options.grid]

    def _chunks(self, images: torch.Tensor):
        for start in range(0, len(images), self.options.batch):
            yield images[start : start + self.options.batch]

    def _features(self, batches, spectrum: SpectrumAccumulator):
        return extract_features(batches, self.extractor, self.inception, spectrum)

    def measure(
        self,
        label: str,
        kind: str,
        generate: Callable[[int, int], torch.Tensor],
        labels: torch.Tensor | None,
        count: int,
        nfe: int | None = None,
        images_seen: int | None = None,
        source: str = "",
        seeds: range | None = None,
        interval: bool = True,
    ) -> tuple[SetResult, torch.Tensor, np.ndarray]:
        """Generate ``count`` images in batches with ``generate(start, stop)``; returns (result, grid, spectrum).

        ``seeds``: the noise seeds the images were made from (recorded with the result); ``interval``: add the
        bootstrap interval of FD (``options.bootstrap`` rounds, capped by its cost)."""
        spectrum = SpectrumAccumulator()
        grid: list[torch.Tensor] = []
        seconds = 0.0
        kept = 0

        def batches():
            nonlocal seconds, kept
            for start in range(0, count, self.options.batch):
                stop = min(start + self.options.batch, count)
                t0 = time.perf_counter()
                images = generate(start, stop).detach().float().cpu().clamp(-1, 1)
                seconds += time.perf_counter() - t0
                if kept < self.options.grid:
                    grid.append(images[: self.options.grid - kept])
                    kept += len(grid[-1])
                yield images

        feats, logits, inc = self._features(batches(), spectrum)
        conditional = labels is not None and logits is not None and logits.shape[1] == self.extractor.num_classes
        metrics = compare(
            self.real_features,
            feats,
            logits if conditional else None,
            labels[:count] if conditional else None,
            kid_subsets=self.options.kid_subsets,
            kid_subset_size=self.options.kid_subset_size,
            real_labels=self.real_labels if conditional else None,
            num_classes=self.extractor.num_classes if conditional else 0,
        )
        fid = None
        if inc is not None and self.real_inception is not None:
            fid = frechet_distance_stats(FeatureStats.of(self.real_inception), FeatureStats.of(inc))
        result = SetResult(label, kind, nfe, images_seen, metrics, seconds, source, fid)
        result.seeds = seeds_record(seeds) if seeds is not None else None
        if interval and self.options.bootstrap:
            result.fd_ci = self.interval(feats).to_json()
        nfe_text = f" NFE {nfe}" if nfe is not None else ""
        self.log(
            f"{label}{nfe_text}: FD {metrics.fd:.3f}, KID {metrics.kid * 1e3:.3f}e-3, precision {metrics.precision:.3f}"
            f", recall {metrics.recall:.3f}"
            + (f", class accuracy {metrics.class_accuracy:.4f}" if metrics.class_accuracy is not None else "")
            + (f", FID {fid:.3f}" if fid is not None else "")
            + f" ({count} images, {seconds:.1f} s generating)"
        )
        return result, torch.cat(grid) if grid else torch.empty(0), spectrum.mean()

    def interval(self, feats: torch.Tensor) -> Interval:
        """The percentile bootstrap interval of FD against the reference, both feature sets resampled."""
        rounds = bootstrap_rounds(self.options.bootstrap, len(self.real_features), len(feats), feats.shape[1])
        return bootstrap_fd(self.real_features, feats, rounds=rounds, seed=0)
