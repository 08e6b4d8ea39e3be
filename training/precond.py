"""Preconditioning: the EDM denoiser D(x; sigma, y), D2O's variant, and the one-step generator G(z, y).

The project's own implementation of the published equations (EDM: Karras et al. 2022, Table 1; D2O:
Zheng & Yang 2025):

    D(x; sigma, y) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), y)

with EDM's c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
c_noise = ln(sigma) / 4 (sd = sigma_data), and D2O's c_skip = sd^2 / ((sigma - eps)^2 + sd^2),
c_out = (sigma - eps) sd / sqrt(sigma^2 + sd^2). ``EDMPrecond`` keeps EDM's constructor arguments and attribute
names, and holds the U-Net at ``self.model`` (state-dict prefix ``model.``), so that EDM checkpoints load as they
are; the code is not derived from EDM's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.networks import NETWORKS

SIGMA_MAX = 80.0  # the generator's noise level: G(z, y) = D(SIGMA_MAX z; SIGMA_MAX, y)
D2O_EPS = 2e-3


class EDMPrecond(nn.Module):
    """EDM's preconditioned denoiser around a ``NETWORKS[model_type]`` U-Net.

    ``forward(x, sigma, class_labels=None, force_fp32=False, **model_kwargs)``: ``x`` [N, C, H, W]; ``sigma`` a
    number, [N] or [N, 1, 1, 1]; ``class_labels`` one-hot [N, label_dim] (integer class indices [N] are one-hot
    encoded; None means the all-zero label, ignored when ``label_dim`` is 0); ``model_kwargs`` (e.g.
    ``augment_labels``) go to the U-Net. The result is float32. With ``use_fp16`` on CUDA the U-Net runs in
    float16 unless ``force_fp32``.
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
        **model_kwargs: Any,
    ):
        super().__init__()
        if model_type not in NETWORKS:
            raise ValueError(f"model_type must be one of {sorted(NETWORKS)}, got {model_type!r}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model_type = model_type
        self.model_kwargs = copy.deepcopy(model_kwargs)  # the U-Net's own arguments, for rebuilding it
        self.model = NETWORKS[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at ``sigma``, elementwise, in sigma's dtype."""
        sigma = torch.as_tensor(sigma)
        sd = self.sigma_data
        norm = (sigma**2 + sd**2).sqrt()
        return sd**2 / (sigma**2 + sd**2), sigma * sd / norm, 1 / norm, sigma.log() / 4

    def prepare_labels(self, class_labels: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
        """The U-Net's ``class_labels``: None when unconditional, else float32 [N, label_dim] (or [1, label_dim]
        zeros for None, which broadcasts over the batch)."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros(1, self.label_dim, device=device)
        if not class_labels.is_floating_point():
            class_labels = F.one_hot(class_labels.long().reshape(-1), self.label_dim)
        return class_labels.to(device=device, dtype=torch.float32).reshape(-1, self.label_dim)

    def compute_dtype(self, device: torch.device, force_fp32: bool = False) -> torch.dtype:
        """The dtype the U-Net runs in: float16 only with ``use_fp16`` on CUDA."""
        return torch.float16 if self.use_fp16 and not force_fp32 and device.type == "cuda" else torch.float32

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        labels = self.prepare_labels(class_labels, x.device)
        dtype = self.compute_dtype(x.device, force_fp32)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=labels, **model_kwargs)
        if f_x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):  # autocast picks per op
            raise RuntimeError(f"the U-Net returned {f_x.dtype}, expected {dtype}")
        return c_skip * x + c_out * f_x.to(torch.float32)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Noise levels are continuous here: sigma as a tensor, unchanged."""
        return torch.as_tensor(sigma)


class D2OPrecond(EDMPrecond):
    """D2O's preconditioning: EDM's with c_skip evaluated at sigma - eps and c_out scaled by (sigma - eps) / sigma,
    so that D(x; eps) = x exactly. Same U-Net, so it loads an EDM teacher's weights unchanged."""

    def __init__(self, *args: Any, eps: float = D2O_EPS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma = torch.as_tensor(sigma)
        _, _, c_in, c_noise = super().coefficients(sigma)
        sd = self.sigma_data
        shifted = sigma - self.eps
        c_skip = sd**2 / (shifted**2 + sd**2)
        c_out = shifted * sd / (sigma**2 + sd**2).sqrt()
        return c_skip, c_out, c_in, c_noise


class OneStepGenerator(nn.Module):
    """G(z, y) = D(sigma z; sigma, one_hot(y)): one denoiser evaluation at ``sigma`` (default SIGMA_MAX).

    ``z`` is unit-variance noise [N, C, H, W]; ``class_labels`` integer classes [N], required when the denoiser is
    class-conditional and ignored when it is not.
    """

    def __init__(self, denoiser: EDMPrecond, sigma: float = SIGMA_MAX):
        super().__init__()
        self.denoiser = denoiser
        self.sigma = float(sigma)

    @property
    def label_dim(self) -> int:
        return self.denoiser.label_dim

    @property
    def img_shape(self) -> tuple[int, int, int]:
        d = self.denoiser
        return (d.img_channels, d.img_resolution, d.img_resolution)

    def one_hot(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """float32 one-hot [batch, label_dim] of ``batch`` integer labels; None for an unconditional denoiser."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            raise ValueError(f"class_labels are required: the generator is conditional (label_dim={self.label_dim})")
        return F.one_hot(class_labels.long().reshape(batch), self.label_dim).to(torch.float32)

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = z.shape[0]
        sigma = torch.full((n,), self.sigma, dtype=torch.float32, device=z.device)
        return self.denoiser(z * self.sigma, sigma, self.one_hot(class_labels, n))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
