"""The synthetic shapes set, and specs that name no known data set."""

from __future__ import annotations

import pytest
import torch

from training.datasets.base import DatasetError
from training.datasets.spec import open_dataset
from training.datasets.synthetic import open_synthetic


def test_synthetic_deterministic_and_classes() -> None:
    a, b = open_synthetic(40), open_dataset("synthetic:40")
    assert torch.equal(a.images, b.images) and a.resolution == 16 and a.channels == 1 and a.num_classes == 10
    assert a.labels.tolist() == [i % 10 for i in range(40)]
    assert not torch.equal(open_dataset("synthetic:40", split="test").images, a.images)
    means = [float(a.images[a.labels == k].float().mean()) for k in range(10)]
    assert len({round(m) for m in means}) > 5  # the classes look different
    rgb = open_dataset("synthetic:10", resolution=32, channels=3)
    assert rgb[3][0].shape == (3, 32, 32)
    with pytest.raises(DatasetError, match="synthetic"):
        open_dataset("synthetic:lots")
    with pytest.raises(DatasetError, match="not a known data set"):
        open_dataset("imagenet")
