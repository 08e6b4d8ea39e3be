"""Preconditioning: EDM's denoiser wrapper, D2O's variant, and the one-step generator built on it."""

from __future__ import annotations

import torch
from torch import nn

from training.networks import NETWORKS

SIGMA_MAX = 80.0
D2O_EPS = 2e-3


class EDMPrecond(nn.Module):
    """D(x; sigma, y) = c_skip x + c_out F(c_in x; c_noise, y), EDM's signature and attribute names.

    The inner network lives at ``self.model`` so its state-dict keys carry EDM's ``model.`` prefix.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model_type = model_type
        self.model_kwargs = dict(model_kwargs)
        self.model = NETWORKS[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for a sigma tensor of shape [N, 1, 1, 1]."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def prepare_labels(self, class_labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = self.prepare_labels(class_labels, x.device)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)


class D2OPrecond(EDMPrecond):
    """D2O's preconditioning: c_skip and c_out shifted by eps so D(x; sigma_max) stays well-scaled at one step."""

    def __init__(self, *args, eps: float = D2O_EPS, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sd, eps = self.sigma_data, self.eps
        c_skip = sd**2 / ((sigma - eps) ** 2 + sd**2)
        c_out = (sigma - eps) * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class OneStepGenerator(nn.Module):
    """G(z, y) = D(sigma_max * z; sigma_max, onehot(y)): one forward pass of a (D2O-)preconditioned denoiser.

    ``class_labels`` are integer class indices [N] (int64); one-hot encoding happens inside so that exported
    graphs take plain indices. Output is the raw denoiser output (use ``clamp(-1, 1)`` for images).
    """

    def __init__(self, denoiser: EDMPrecond, sigma: float = SIGMA_MAX):
        super().__init__()
        self.denoiser = denoiser
        self.sigma = float(sigma)
        self.register_buffer("label_table", torch.eye(max(denoiser.label_dim, 1)), persistent=False)

    @property
    def label_dim(self) -> int:
        return self.denoiser.label_dim

    @property
    def img_shape(self) -> tuple[int, int, int]:
        d = self.denoiser
        return (d.img_channels, d.img_resolution, d.img_resolution)

    def one_hot(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        if class_labels is None:
            raise ValueError("this generator is class-conditional: class_labels are required")
        return self.label_table[class_labels.long().reshape(batch)]

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.full((z.shape[0],), self.sigma, dtype=torch.float32, device=z.device)
        return self.denoiser(z * self.sigma, sigma, self.one_hot(class_labels, z.shape[0]))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
