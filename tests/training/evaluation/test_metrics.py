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
    manifold_membership,
    precision_recall,
    share_by_class,
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


def test_precision_and_recall_by_class_locate_a_missing_mode():
    rng = np.random.default_rng(8)
    # Real class 0 near the origin, class 1 far away; the samples all claim class 0 and cover only its mode,
    # except 40 of them, labelled class 2, which land far from every real image.
    real = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 20])
    real_labels = np.array([0] * 200 + [1] * 200)
    fake = np.concatenate([rng.normal(size=(360, 4)), rng.normal(size=(40, 4)) - 50])
    fake_labels = np.array([0] * 360 + [2] * 40)
    fake_inside, real_inside = manifold_membership(real, fake)
    assert fake_inside.dtype == torch.bool and real_inside.shape == (400,)
    recall = share_by_class(real_inside, real_labels, 3)
    precision = share_by_class(fake_inside, fake_labels, 3)
    assert recall[0] > 0.8 and recall[1] == 0.0 and recall[2] is None
    assert precision[0] > 0.9 and precision[1] is None and precision[2] == 0.0
    # The overall figures are the class-size-weighted means of the rows.
    p, r = precision_recall(real, fake)
    assert r == pytest.approx((200 * recall[0] + 200 * recall[1]) / 400)
    assert p == pytest.approx((360 * precision[0] + 40 * precision[2]) / 400)
    m = compare(real, fake, rng.normal(size=(400, 3)), fake_labels, kid_subsets=3, kid_subset_size=50,
                real_labels=real_labels, num_classes=3)  # fmt: skip
    assert m.recall_by_class == recall and m.precision_by_class == precision
    assert (m.precision, m.recall) == (p, r)
    # Without the reals' labels: overall figures only.
    m = compare(real, fake, rng.normal(size=(400, 3)), fake_labels, kid_subsets=3, kid_subset_size=50)
    assert m.recall_by_class is None and m.precision_by_class is None
    with pytest.raises(ValueError):
        share_by_class(real_inside, real_labels[:10], 3)
