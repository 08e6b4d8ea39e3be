"""Image helpers: [-1, 1] tensors to uint8, PNG sample grids and the training runs' grid noise and labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, cols: int | None = None) -> Image.Image:
    """Tile a batch into one PIL image, row-major."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = arr[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_image_grid(images: torch.Tensor, path: str | Path, cols: int | None = None) -> None:
    image_grid(images, cols).save(path)


GRID_SEED = 2025  # first noise seed of the training runs' progress grids


def grid_labels(label_dim: int, n: int) -> torch.Tensor | None:
    """Class i in column i: a grid with one column per class."""
    return torch.arange(n) % label_dim if label_dim else None
