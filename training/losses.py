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

    def draw(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss's randomness for a batch: (standard normal [N,1,1,1] for ln sigma, unit noise like images)."""
        n = images.shape[0]
        rnd_normal = torch.randn([n, 1, 1, 1], generator=generator)
        unit_noise = torch.randn(images.shape, generator=generator)
        return rnd_normal.to(images.device), unit_noise.to(images.device)

    def __call__(
        self,
        net: EDMPrecond,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        rnd_normal: torch.Tensor | None = None,
        unit_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-element loss [N, C, H, W]; ``labels`` are integer class indices.

        Pass ``rnd_normal``/``unit_noise`` (from ``draw``) to control the randomness, e.g. to make a
        data-parallel step equal a single-process one.
        """
        if rnd_normal is None or unit_noise is None:
            rnd_normal, unit_noise = self.draw(images)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        label_dim = getattr(net, "label_dim", None)
        if label_dim is None:  # DDP wrapper
            label_dim = net.module.label_dim
        denoised = net(images + unit_noise * sigma, sigma, one_hot(labels, label_dim))
        return weight * (denoised - images) ** 2
