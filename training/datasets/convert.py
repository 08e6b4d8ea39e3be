"""Image conversion: PIL images and uint8 stacks to a set's channel count and square resolution."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _resize_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` (Lanczos down, bicubic up), then center-crop a square."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / min(w, h)
    if scale != 1:
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        img = img.resize(size, resample)
        w, h = size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def _convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB'; transparency is composited on white, 16-bit gray keeps its top byte."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def image_to_uint8(img: Image.Image, channels: int, resolution: int) -> torch.Tensor:
    """A PIL image -> uint8 tensor [channels, resolution, resolution]."""
    img = _resize_crop(_convert_mode(img, channels), resolution)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _resize_stack(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, C, R, R] through PIL, one image at a time."""
    n, c = images.shape[:2]
    if images.shape[2:] == (resolution, resolution):
        return images
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        if c == 1:
            img = Image.fromarray(images[i, 0], "L")
        else:
            img = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)), "RGB")
        arr = np.asarray(_resize_crop(img, resolution), dtype=np.uint8)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


def match_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 [N, C, H, W] -> ``channels`` (gray replicated to RGB, RGB to ITU-R 601 luma as PIL does)."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    luma = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]


def square_images(images: np.ndarray, resolution: int | None) -> np.ndarray:
    """uint8 [N, C, H, W] -> square: resized and center-cropped to ``resolution`` (None: the shorter side)."""
    h, w = images.shape[2:]
    if resolution is None:
        if h == w:
            return images
        resolution = min(h, w)
    return _resize_stack(images, resolution)
