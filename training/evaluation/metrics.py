"""Sample-quality metrics on feature vectors: Fréchet distance, KID, improved precision/recall, class accuracy.

Features come from any network (``features``): the project's own evaluation classifier (``classifier``; FD in its
space is "FD-FMNIST" on Fashion-MNIST) or, when the user has the weights file, Inception-v3
(``inception``; FD there is the usual FID). All math runs in float64 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set (what FD needs; EDM's reference ``.npz`` holds the same)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> FeatureStats:
        x = _as_float64(features)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need at least 2 feature rows [N, D], got shape {x.shape}")
        return cls(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), count=x.shape[0])

    def save(self, path: str) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, count=self.count)

    @classmethod
    def load(cls, path: str) -> FeatureStats:
        with np.load(path, allow_pickle=False) as f:
            return cls(mu=f["mu"], sigma=f["sigma"], count=int(f["count"]))


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), which stays real and stable for singular covariances,
    where ``scipy.linalg.sqrtm`` can return complex parts or blow up.
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    s1, s2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def frechet_distance_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def kid(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over random subsets of ``subset_size`` rows (capped at the smaller set); returns (mean, std).
    Unbiased: on two samples of one distribution the mean is near 0 and may be negative.
    """
    x, y = _as_float64(real), _as_float64(fake)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature shapes do not match: {x.shape} vs {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        k_aa = (a @ a.T / d + 1) ** 3
        k_bb = (b @ b.T / d + 1) ** 3
        k_ab = (a @ b.T / d + 1) ** 3
        values[i] = (
            (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
            + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
            - 2 * k_ab.mean()
        )
    return float(values.mean()), float(values.std())


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    radii = torch.empty(x.shape[0], dtype=x.dtype)
    for start in range(0, x.shape[0], chunk):
        d = torch.cdist(x[start : start + chunk], x)
        # The k+1 smallest include the row itself at distance 0.
        radii[start : start + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _inside(manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each row of ``probes``: whether it lies inside at least one ball (manifold row, its radius)."""
    inside = torch.empty(probes.shape[0], dtype=torch.bool)
    for start in range(0, probes.shape[0], chunk):
        d = torch.cdist(probes[start : start + chunk], manifold)
        inside[start : start + chunk] = (d <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3, chunk: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour balls.

    Precision: fraction of fake samples within the real manifold; recall: fraction of real samples within
    the fake manifold. Use equal set sizes: the ball radii depend on the density of each set.
    """
    fake_inside, real_inside = manifold_membership(real, fake, k, chunk)
    return float(fake_inside.double().mean()), float(real_inside.double().mean())


def manifold_membership(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 3, chunk: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the tests behind precision and recall: (each fake row inside the real manifold, each real row
    inside the fake manifold), as boolean vectors."""
    x = torch.as_tensor(_as_float64(real))
    y = torch.as_tensor(_as_float64(fake))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[0], y.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    real_radii = _kth_neighbour_radii(x, k, chunk)
    fake_radii = _kth_neighbour_radii(y, k, chunk)
    return _inside(x, real_radii, y, chunk), _inside(y, fake_radii, x, chunk)


def _as_labels(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class labels as a CPU int64 tensor."""
    return torch.as_tensor(np.asarray(labels if not isinstance(labels, torch.Tensor) else labels.cpu())).long()


def share_by_class(inside: torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int) -> list[float | None]:
    """The share of rows of each class 0..num_classes-1 for which ``inside`` holds (None for a class with no
    rows). With the membership of :func:`manifold_membership`: recall by the real images' class (how much of
    each class the samples cover) and precision by the samples' class; the overall figure is their
    row-weighted mean."""
    labels_t = _as_labels(labels)
    if labels_t.shape[0] != inside.shape[0]:
        raise ValueError(f"{inside.shape[0]} rows for {labels_t.shape[0]} labels")
    out: list[float | None] = []
    for c in range(num_classes):
        rows = inside[labels_t == c]
        out.append(float(rows.double().mean()) if len(rows) else None)
    return out


def class_accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Share of conditional samples that the classifier assigns to the class they were generated for."""
    logits_t = torch.as_tensor(_as_float64(logits))
    labels_t = _as_labels(labels)
    if logits_t.shape[0] != labels_t.shape[0]:
        raise ValueError(f"{logits_t.shape[0]} predictions for {labels_t.shape[0]} labels")
    return float((logits_t.argmax(dim=1) == labels_t).double().mean())


@dataclass
class SetMetrics:
    fd: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    class_accuracy: float | None = None
    count: int = 0
    recall_by_class: list[float | None] | None = None  # by the real images' class (needs both sides' labels)
    precision_by_class: list[float | None] | None = None  # by the class the samples were generated for


def compare(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    fake_logits: np.ndarray | torch.Tensor | None = None,
    fake_labels: np.ndarray | torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    real_stats: FeatureStats | None = None,
    real_labels: np.ndarray | torch.Tensor | None = None,
    num_classes: int = 0,
) -> SetMetrics:
    """All metrics of one sample set against the reference features.

    ``real_stats``: the reference's mean and covariance where they were computed over more images than
    ``real_features`` holds (a statistics file keeps all images' moments and a fixed subset of their features,
    which KID and precision/recall use); by default they are computed from ``real_features``.
    ``real_labels`` and ``num_classes``: with ``fake_labels``, also precision and recall by class.
    """
    real_stats = real_stats if real_stats is not None else FeatureStats.of(real_features)
    fake_stats = FeatureStats.of(fake_features)
    kid_mean, kid_std = kid(real_features, fake_features, kid_subsets, kid_subset_size)
    n = min(len(real_features), len(fake_features))
    fake_inside, real_inside = manifold_membership(real_features[:n], fake_features[:n], k=pr_k)
    acc = None
    if fake_logits is not None and fake_labels is not None:
        acc = class_accuracy(fake_logits, fake_labels)
    by_class = real_labels is not None and fake_labels is not None and num_classes > 0
    return SetMetrics(
        fd=frechet_distance_stats(real_stats, fake_stats),
        kid=kid_mean,
        kid_std=kid_std,
        precision=float(fake_inside.double().mean()),
        recall=float(real_inside.double().mean()),
        class_accuracy=acc,
        count=len(fake_features),
        recall_by_class=share_by_class(real_inside, real_labels[:n], num_classes) if by_class else None,
        precision_by_class=share_by_class(fake_inside, fake_labels[:n], num_classes) if by_class else None,
    )
