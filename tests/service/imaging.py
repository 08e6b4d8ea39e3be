"""Decode service responses into arrays for comparisons."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def decode_json_images(payload: dict) -> list[np.ndarray]:
    return [decode(base64.b64decode(img["data"])) for img in payload["images"]]


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
