import numpy as np
import pytest
import scipy.linalg
import torch

from training.evaluation.metrics import (
    FeatureStats,
    class_accuracy,
    compare,
    frechet_distance,
    frechet_distance_stats,
    kid,
    precision_recall,
)


def test_fd_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    s = FeatureStats.of(x)
    assert frechet_distance_stats(s, s) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_two_diagonal_gaussians_is_analytic():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # Estimated from samples, the FD converges to the same value.
    a = mu1 + rng.normal(size=(200_000, 8)) * np.sqrt(v1)
    b = mu2 + rng.normal(size=(200_000, 8)) * np.sqrt(v2)
    assert frechet_distance_stats(FeatureStats.of(a), FeatureStats.of(b)) == pytest.approx(expected, rel=0.02)


def test_fd_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    s1, s2 = a @ a.T + 0.1 * np.eye(12), b @ b.T + 0.1 * np.eye(12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fd_is_finite_for_singular_covariances():
    rng = np.random.default_rng(3)
    # 64-d features from only 20 samples: rank-deficient covariances, as with few samples and wide features.
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    fd = frechet_distance_stats(FeatureStats.of(a), FeatureStats.of(b))
    assert np.isfinite(fd) and fd > 0


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_round_trip(tmp_path):
    s = FeatureStats.of(torch.randn(50, 4))
    s.save(str(tmp_path / "ref.npz"))
    t = FeatureStats.load(str(tmp_path / "ref.npz"))
    assert t.count == 50 and np.array_equal(s.mu, t.mu) and np.array_equal(s.sigma, t.sigma)


def test_kid_is_unbiased_on_equal_distributions():
    rng = np.random.default_rng(4)
    means = []
    for _ in range(20):
        x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
        means.append(kid(x, y, num_subsets=10, subset_size=100, seed=int(rng.integers(1 << 30)))[0])
    means = np.array(means)
    # An unbiased estimator of MMD^2 = 0 is centred on zero: negative values occur.
    assert (means < 0).any() and (means > 0).any()
    shifted = kid(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 0.5, 10, 100)[0]
    assert abs(means.mean()) < 0.05 * shifted


def test_kid_checks_shapes():
    with pytest.raises(ValueError):
        kid(np.zeros((10, 3)), np.zeros((10, 4)))


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    p, r = precision_recall(x, x + 100.0)
    assert p == 0.0 and r == 0.0


def test_precision_recall_detect_mode_collapse():
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 20])
    fake = rng.normal(size=(400, 4))  # covers only the first mode
    p, r = precision_recall(real, fake)
    assert p > 0.9
    assert 0.35 < r < 0.6


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert class_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError):
        class_accuracy(logits, torch.tensor([0, 1]))


def test_compare_bundles_all_metrics():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(100, 6)), rng.normal(size=(100, 6))
    logits, labels = rng.normal(size=(100, 3)), rng.integers(0, 3, 100)
    m = compare(real, fake, logits, labels, kid_subsets=5, kid_subset_size=50)
    assert m.count == 100 and m.fd >= 0 and 0 <= m.precision <= 1 and 0 <= m.recall <= 1
    assert m.class_accuracy is not None
