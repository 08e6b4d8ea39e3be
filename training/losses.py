"""EDM's denoising score-matching loss (Karras et al. 2022, sec. 5)."""

from __future__ import annotations

import torch

from training.precond import EDMPrecond
from training.sampling import one_hot


class EDMLoss:
    """ln(sigma) ~ N(P_mean, P_std^2); weight (sigma^2 + sd^2) / (sigma sd)^2; L = w * ||D(y + sigma n) - y||^2."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(
        self,
        net: EDMPrecond,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-element loss [N, C, H, W]; ``labels`` are integer class indices."""
        n = images.shape[0]
        rnd_normal = torch.randn([n, 1, 1, 1], device=images.device, generator=generator)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn(images.shape, device=images.device, generator=generator) * sigma
        denoised = net(images + noise, sigma, one_hot(labels, net.label_dim))
        return weight * (denoised - images) ** 2
