"""The exported graph's interface, shared by every export format and by the parity checks.

Inputs ``z`` float32 [N, C, H, W] and, for a class-conditional model, ``class_labels`` int64 [N]; outputs
``images`` float32 [N, C, H, W] in [-1, 1] and, optionally, ``images_uint8`` uint8 [N, H, W, C] =
:func:`to_uint8_nhwc` (images).
"""

from __future__ import annotations

import torch

INPUT_Z = "z"
INPUT_LABELS = "class_labels"
OUTPUT_IMAGES = "images"
OUTPUT_UINT8 = "images_uint8"


def to_uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NHWC as EDM's generate.py rounds: floor(x * 127.5 + 128) clamped to 0..255.

    That is round-half-up of (x + 1) * 127.5. The ONNX graph and the service's torch backend both use this.
    """
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
