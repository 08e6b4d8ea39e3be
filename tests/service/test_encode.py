"""Image encoding: lossless PNG, JPEG/WebP quality, grey and RGB."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service.encode import encode_image, encode_images
from tests.service.helpers import decode, max_diff


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 32 * 32 * 3).reshape(1, 32, 32, 3)
    return (smooth + rng.integers(0, 8, (2, 32, 32, 3))).clip(0, 255).astype(np.uint8)


def test_png_is_lossless_grey_and_rgb(images: np.ndarray) -> None:
    rgb = images[0]
    assert np.array_equal(decode(encode_image(rgb, "png")), rgb)
    grey = rgb[:, :, :1]
    assert np.array_equal(decode(encode_image(grey, "png")), grey[:, :, 0])


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_quality(images: np.ndarray, fmt: str) -> None:
    low, high = encode_image(images[0], fmt, 20), encode_image(images[0], fmt, 95)
    assert len(low) < len(high)
    assert max_diff(decode(high), images[0]) < 40


def test_encode_images_base64_and_errors(images: np.ndarray) -> None:
    out = encode_images(list(images), "png", 90, b64=True)
    assert [np.array_equal(decode(base64.b64decode(b)), img) for b, img in zip(out, images, strict=True)] == [1, 1]
    with pytest.raises(ValueError, match="format"):
        encode_image(images[0], "gif")
    with pytest.raises(ValueError, match="channels"):
        encode_image(np.zeros((4, 4, 2), np.uint8), "png")
    with pytest.raises(ValueError, match="HWC uint8"):
        encode_image(np.zeros((4, 4, 3), np.float32), "png")
