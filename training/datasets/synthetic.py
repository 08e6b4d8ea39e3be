"""``synthetic:N``: deterministic simple shapes in 10 classes, for tests."""

from __future__ import annotations

import math

import torch

from training.datasets.base import DatasetError, TensorImageDataset, check_split


def open_synthetic(
    n: int, split: str = "train", *, resolution: int | None = None, channels: int | None = None
) -> TensorImageDataset:
    """N deterministic images of 10 shape classes (label i % 10) with jittered position, size and brightness."""
    check_split(split)
    if n < 1:
        raise DatasetError(f"synthetic:{n}: the number of images must be >= 1")
    res = resolution or 16
    c = channels or 1
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(n) % 10
    center = (torch.rand(n, 2, generator=g) - 0.5) * 0.4
    size = 0.35 + 0.25 * torch.rand(n, generator=g)
    level = 0.7 + 0.3 * torch.rand(n, generator=g)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    x = (xx[None] - center[:, 0, None, None]) / size[:, None, None]
    y = (yy[None] - center[:, 1, None, None]) / size[:, None, None]
    r = torch.sqrt(x**2 + y**2)
    shapes = [
        r < 1,  # disk
        (x.abs() < 0.8) & (y.abs() < 0.8),  # square
        (y.abs() < 0.3) & (x.abs() < 1.2),  # horizontal bar
        (x.abs() < 0.3) & (y.abs() < 1.2),  # vertical bar
        (r < 1) & (r > 0.55),  # ring
        ((x.abs() < 0.25) | (y.abs() < 0.25)) & (r < 1.2),  # cross
        (y > -0.8) & (y < 0.8) & (x.abs() < (y + 0.8) / 2),  # triangle
        ((x - y).abs() < 0.35) & (r < 1.2),  # diagonal
        (torch.floor(x * 1.5 + 8) + torch.floor(y * 1.5 + 8)) % 2 == 0,  # checker
        (torch.sqrt((x - 0.5) ** 2 + y**2) < 0.45) | (torch.sqrt((x + 0.5) ** 2 + y**2) < 0.45),  # two blobs
    ]
    mask = torch.stack(shapes, dim=1)[torch.arange(n), labels].float()  # [n, res, res]
    img = mask * level[:, None, None]
    if c == 3:
        hue = labels.float() / 10 * 2 * math.pi
        color = torch.stack([torch.cos(hue + k * 2 * math.pi / 3) * 0.35 + 0.65 for k in range(3)], dim=1)
        img = img[:, None] * color[:, :, None, None]
    elif c == 1:
        img = img[:, None]
    else:
        raise ValueError(f"channels must be 1 or 3, got {c}")
    images = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return TensorImageDataset(
        "synthetic", images, labels, 10, ["disk", "square", "hbar", "vbar", "ring", "cross", "triangle", "diagonal",
                                          "checker", "blobs"],
    )  # fmt: skip
