"""Image encoding: PNG written directly with zlib (the hot path), JPEG/WebP with Pillow, and raw uint8 pixels.

Runs on the inference thread when no other batch is waiting, else in the encode pool beside inference.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

# zlib level 1: PNG stays lossless; higher levels cost several times the CPU for a few percent of bytes.
_PNG_LEVEL = 1
# Below this many bytes of pixel rows a PNG stores its rows uncompressed (still a valid, lossless PNG): zlib's
# per-call setup (~300 KB of tables cleared) costs 30-60 us, several times the stored copy, to save a few hundred
# bytes. A 28x28 grey image has 812 bytes of rows; a 32x32 RGB one 3,104.
PNG_STORED_MAX = 2048
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[2] not in _PNG_COLOUR:
        raise ValueError(f"expected 1 or 3 channels, got {image.shape[2]}")


def to_pil(image: np.ndarray) -> Image.Image:
    """HWC uint8 (C = 1 or 3) -> PIL image."""
    _check(image)
    if image.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(image[:, :, 0]))
    return Image.fromarray(np.ascontiguousarray(image))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(image: np.ndarray) -> bytes:
    """HWC uint8 -> PNG (8-bit grey or RGB, filter type 0 on every row, zlib level 1 or stored when small).

    Pillow's encoder spends ~5x this CPU on a small image (its Python-level plugin machinery and adaptive row
    filters); on generated images filter 0 also gave the smallest files of the filters tried (docs/benchmarks.md).
    """
    _check(image)
    h, w, c = image.shape
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = image.reshape(h, w * c)
    data = rows.tobytes()
    level = 0 if len(data) <= PNG_STORED_MAX else _PNG_LEVEL
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOUR[c], 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(data, level)) + _PNG_IEND


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """One HWC uint8 image as png, jpeg, webp or raw (its pixels, C order)."""
    if fmt == "png":
        return encode_png(image)
    if fmt == "raw":
        if image.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {image.dtype}")
        return image.tobytes()
    pil = to_pil(image)
    buf = io.BytesIO()
    if fmt == "jpeg":
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
