"""exporters/parity.py: seeded inputs, the comparison and its verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.parity import ParityError, compare, seeded_inputs


def _runner(noise: float = 0.0, u8_shift: int = 0):
    def run(z: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        images = np.clip(np.tanh(z + (0 if labels is None else labels[:, None, None, None] * 0.1)), -1, 1)
        images = images + noise
        u8 = np.clip(np.floor(images * 127.5 + 128) + u8_shift, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return {"images": images.astype(np.float32), "images_uint8": u8}

    return run


def test_seeded_inputs_are_per_row():
    z7, l7 = seeded_inputs((1, 4, 4), 10, 7, seed=5)
    z3, _ = seeded_inputs((1, 4, 4), 10, 3, seed=5)
    assert z7.dtype == np.float32 and z7.shape == (7, 1, 4, 4)
    np.testing.assert_array_equal(z7[:3], z3)  # row i depends on seed + i only
    assert l7.dtype == np.int64 and l7.shape == (7,) and l7.min() >= 0 and l7.max() < 10
    assert seeded_inputs((1, 4, 4), 0, 2)[1] is None


def test_identical_runners_pass():
    report = compare(_runner(), _runner(), img_shape=(1, 4, 4), label_dim=10, batches=(1, 7, 64))
    assert report.passed and report.max_abs_diff == 0
    assert [r.uint8_max_diff for r in report.results] == [0, 0, 0]


def test_difference_over_tolerance_fails():
    report = compare(_runner(), _runner(noise=3e-4), img_shape=(1, 4, 4), label_dim=0, batches=(1, 7), atol=1e-4)
    assert not report.passed and report.max_abs_diff == pytest.approx(3e-4, rel=1e-2)
    with pytest.raises(ParityError, match="FAIL") as info:
        report.raise_if_failed("model.onnx")
    assert info.value.report is report and str(info.value).startswith("model.onnx:")


def test_uint8_output_checked_separately():
    report = compare(_runner(), _runner(u8_shift=2), img_shape=(1, 4, 4), label_dim=10, batches=(7,))
    assert report.max_abs_diff == 0 and report.results[0].uint8_max_diff == 2
    assert not report.passed


def test_nan_fails_and_shape_mismatch_raises():
    def nan_runner(z, labels):
        out = _runner()(z, labels)
        out["images"][0, 0, 0, 0] = np.nan
        return out

    assert not compare(_runner(), nan_runner, img_shape=(1, 4, 4), label_dim=0, batches=(2,)).passed

    def short(z, labels):
        return {"images": _runner()(z, labels)["images"][:1]}

    with pytest.raises(ParityError, match="shape"):
        compare(_runner(), short, img_shape=(1, 4, 4), label_dim=0, batches=(2,))
