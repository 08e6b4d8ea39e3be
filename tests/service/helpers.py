"""Test helpers: decode service responses into arrays, read values from /metrics text."""

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


def metric_value(text: str, series: str) -> float:
    """The value of one series (name{labels} exactly as exposed) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")
