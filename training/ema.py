"""Exponential moving average (EMA) of a network's weights, with EDM's half-life ramp-up.

The EMA is specified by its half-life in images: after ``halflife`` images the old average's weight has halved, so
one step of ``batch_size`` images decays it by beta = 0.5 ** (batch_size / halflife). With a ramp-up ratio r the
half-life is min(halflife_kimg * 1000, r * images seen), so early averages do not drag the untrained start along
(Karras et al. 2022). Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_size: int, images_seen: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Decay of the average for one step of ``batch_size`` images, ``images_seen`` images into training."""
    halflife_images = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_images = min(halflife_images, rampup_ratio * images_seen)
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


class EMA:
    """A frozen eval-mode copy of ``net`` (``self.net``) that :meth:`update` moves towards the live weights."""

    def __init__(self, net: nn.Module, halflife_kimg: float = 500, rampup_ratio: float | None = 0.05):
        self.halflife_kimg = halflife_kimg
        self.rampup_ratio = rampup_ratio
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, batch_size: int, images_seen: int) -> float:
        """average <- beta * average + (1 - beta) * weights; buffers <- net's. Returns beta."""
        beta = ema_beta(batch_size, images_seen, self.halflife_kimg, self.rampup_ratio)
        for avg, live in zip(self.net.parameters(), net.parameters(), strict=True):
            avg.copy_(torch.lerp(live.detach(), avg, beta))
        for avg_buf, live_buf in zip(self.net.buffers(), net.buffers(), strict=True):
            avg_buf.copy_(live_buf)
        return beta
