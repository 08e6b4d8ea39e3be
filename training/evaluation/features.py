"""Feature extraction: images to the feature vectors (and class logits) the metrics compare.

The evaluation classifier gives features and logits (``classifier``); Inception-v3, when the user has its
weights file, gives the features of the usual FID (``inception``). Features come back as float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from training.evaluation.classifier import Classifier
from training.evaluation.spectra import SpectrumAccumulator

FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def collect_features(fn: FeatureFn, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``fn`` (images -> (features, logits or None)) over batches and concatenate."""
    feats, logits = [], []
    for images in batches:
        f, l = fn(images)
        feats.append(f.double().cpu())
        if l is not None:
            logits.append(l.double().cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


@torch.no_grad()
def extract_features(
    batches: Iterable[torch.Tensor],
    classifier: Classifier,
    inception: FeatureFn | None,
    device: str,
    spectrum: SpectrumAccumulator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Classifier features, classifier logits and Inception features (None without ``inception``) of every
    batch, in one pass that also adds each batch to ``spectrum``."""
    feats, logits, inc = [], [], []
    for images in batches:
        spectrum.update(images)
        x = images.to(device)
        f = classifier.features(x)
        feats.append(f.double().cpu())
        logits.append(classifier.head(f).double().cpu())
        if inception is not None:
            inc.append(inception(x)[0].double().cpu())
    return torch.cat(feats), torch.cat(logits), (torch.cat(inc) if inc else None)
