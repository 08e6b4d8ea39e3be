"""Image encoding (PNG/JPEG/WebP with Pillow); runs in its own thread pool beside inference."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

# zlib level 1: PNG stays lossless; higher levels cost several times the CPU for a few percent of bytes.
_PNG_LEVEL = 1


def to_pil(image: np.ndarray) -> Image.Image:
    """HWC uint8 (C = 1 or 3) -> PIL image."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(image[:, :, 0]))
    if image.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(image))
    raise ValueError(f"expected 1 or 3 channels, got {image.shape[2]}")


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    pil = to_pil(image)
    buf = io.BytesIO()
    if fmt == "png":
        pil.save(buf, "PNG", compress_level=_PNG_LEVEL)
    elif fmt == "jpeg":
        pil.save(buf, "JPEG", quality=quality)
    elif fmt == "webp":
        pil.save(buf, "WEBP", quality=quality, method=2)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def encode_images(images: Sequence[np.ndarray], fmt: str, quality: int, b64: bool) -> list[bytes]:
    """Encode a request's images; with ``b64`` the results are base64 (ASCII bytes) ready for JSON."""
    out = [encode_image(img, fmt, quality) for img in images]
    return [base64.b64encode(blob) for blob in out] if b64 else out
