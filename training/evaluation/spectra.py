"""Radially averaged power spectra: the frequency analysis the D2O paper uses to compare real and one-step images."""

from __future__ import annotations

import numpy as np
import torch


def radial_power_spectrum(images: torch.Tensor) -> np.ndarray:
    """Mean power per integer spatial-frequency radius, averaged over images and channels.

    ``images`` [N, C, H, W]. Each channel has its mean removed (the DC term carries brightness, not
    structure), then |FFT|^2 / (H W) is averaged over rings of radius round(sqrt(fy^2 + fx^2)) in cycles per
    image, for radii 0 .. min(H, W) // 2 (the Nyquist limit; corner frequencies beyond it are left out).
    Index r of the result is the power at r cycles per image.
    """
    if images.ndim != 4:
        raise ValueError(f"expected [N, C, H, W], got {tuple(images.shape)}")
    _, _, h, w = images.shape
    x = images.detach().to(torch.float64).cpu()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    power = (torch.fft.fft2(x).abs() ** 2 / (h * w)).mean(dim=(0, 1))
    fy = torch.fft.fftfreq(h, d=1 / h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, d=1 / w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()
    r_max = min(h, w) // 2
    keep = radius <= r_max
    sums = torch.zeros(r_max + 1, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    counts = torch.zeros(r_max + 1, dtype=torch.float64).index_add_(0, radius[keep], torch.ones_like(power[keep]))
    return (sums / counts.clamp(min=1)).numpy()


class SpectrumAccumulator:
    """Running mean of ``radial_power_spectrum`` over batches (weighted by batch size)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, images: torch.Tensor) -> None:
        s = radial_power_spectrum(images) * images.shape[0]
        self.total = s if self.total is None else self.total + s
        self.count += images.shape[0]

    def mean(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("no images accumulated")
        return self.total / self.count
