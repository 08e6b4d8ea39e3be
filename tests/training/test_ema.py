"""EMA of weights: the half-life and its ramp-up, against values computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.ema import EMA, ema_beta


@pytest.mark.parametrize(
    ("batch_size", "images_seen", "halflife_kimg", "rampup_ratio", "expected"),
    [
        (100, 10**6, 0.1, None, 0.5),  # one half-life (100 images) per step
        (50, 10**6, 0.1, None, 0.70710678),  # half a half-life: sqrt(1/2)
        (100, 10**6, 0.1, 0.05, 0.5),  # ramp-up half-life 50k images > 100: the plain one wins
        (50, 2000, 500, 0.05, 0.70710678),  # ramp-up: min(500k, 0.05 * 2000 = 100) images
        (100, 4000, 500, 0.05, 0.70710678),  # ramp-up half-life 0.05 * 4000 = 200 images, a step is half of it
        (400, 4000, 500, 0.05, 0.25),  # a step of two half-lives
    ],
)
def test_beta_hand_computed(batch_size, images_seen, halflife_kimg, rampup_ratio, expected) -> None:
    assert ema_beta(batch_size, images_seen, halflife_kimg, rampup_ratio) == pytest.approx(expected, rel=1e-7)


def test_beta_is_zero_before_any_image_with_rampup() -> None:
    """No images seen: the half-life ramps from 0, so the average simply takes the weights."""
    assert ema_beta(64, 0, 500, 0.05) == 0.0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.register_buffer("count", torch.zeros(1))


def test_update_averages_parameters_and_copies_buffers() -> None:
    net = Tiny()
    with torch.no_grad():
        net.lin.weight.fill_(2.0)
    ema = EMA(net, halflife_kimg=0.1, rampup_ratio=None)  # batch 100 -> beta 0.5
    assert not ema.net.training and not any(p.requires_grad for p in ema.net.parameters())

    with torch.no_grad():
        net.lin.weight.fill_(4.0)
        net.count.fill_(7.0)
    assert ema.update(net, batch_size=100, images_seen=100) == 0.5
    assert ema.net.lin.weight.item() == 3.0  # 0.5 * 2 + 0.5 * 4
    assert ema.net.count.item() == 7.0  # buffers are copied, not averaged
    ema.update(net, batch_size=100, images_seen=200)
    assert ema.net.lin.weight.item() == 3.5  # 0.5 * 3 + 0.5 * 4
    assert net.lin.weight.item() == 4.0  # the live net is untouched

    beta = ema.update(net, batch_size=50, images_seen=250)  # beta = sqrt(1/2)
    assert ema.net.lin.weight.item() == pytest.approx(beta * 3.5 + (1 - beta) * 4.0, abs=1e-6)
    assert ema.net.lin.weight.item() == pytest.approx(3.6464466, abs=1e-6)
