"""Exponential moving average (EMA) of a network's weights, with EDM's half-life ramp-up.

The EMA is specified by its half-life in images: after ``halflife`` images the old average's weight has halved, so
one step of ``batch_size`` images decays it by beta = 0.5 ** (batch_size / halflife). With a ramp-up ratio r the
half-life is min(halflife_kimg * 1000, r * images seen), so early averages do not drag the untrained start along
(Karras et al. 2022). Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EMATrack:
    """One more average of the same run's weights (``--ema-extra``): its half-life, ramp-up and where it goes.

    An EMA does not change training, so one run can keep several and compare them afterwards at no extra
    training cost; each track's snapshots go to ``RUN_DIR/<dirname>/network-snapshot-KKKKKK``, which
    ``training.evaluate`` and ``training.generate`` read as a run dir of its own.
    """

    halflife_kimg: float
    rampup_ratio: float

    @property
    def dirname(self) -> str:
        return f"ema-{self.halflife_kimg:g}kimg-rampup{self.rampup_ratio:g}"


def parse_ema_track(text: str, default_rampup: float) -> EMATrack:
    """``HALFLIFE_KIMG`` (the run's ramp-up) or ``HALFLIFE_KIMG:RAMPUP``, both positive."""
    head, sep, tail = text.strip().partition(":")
    try:
        halflife = float(head)
        rampup = float(tail) if sep else float(default_rampup)
    except ValueError:
        raise ValueError(f"EMA track {text!r}: expected HALFLIFE_KIMG or HALFLIFE_KIMG:RAMPUP, numbers") from None
    if not (halflife > 0 and rampup > 0) or not all(map(math.isfinite, (halflife, rampup))):
        raise ValueError(f"EMA track {text!r}: half-life and ramp-up must be positive and finite")
    return EMATrack(halflife, rampup)
