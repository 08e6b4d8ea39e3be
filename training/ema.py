"""Exponential moving average of weights with EDM's half-life ramp-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_size: int, images_seen: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """Decay per step: the half-life is min(halflife_kimg, rampup_ratio * images seen), in images."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    def __init__(self, net: nn.Module, halflife_kimg: float = 500, rampup_ratio: float | None = 0.05):
        self.halflife_kimg = halflife_kimg
        self.rampup_ratio = rampup_ratio
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, batch_size: int, images_seen: int) -> float:
        beta = ema_beta(batch_size, images_seen, self.halflife_kimg, self.rampup_ratio)
        for p_ema, p in zip(self.net.parameters(), net.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.net.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)
        return beta
