"""The ``null`` backend, for benchmarks only: no model compute, the images are the seeded noise itself.

It reads the model dir's config.json (shape, classes) but never its weights, so a request costs the service
everything but the forward pass: HTTP, parsing, queueing, batching, noise, encoding and the response. That is
the per-request floor ``python -m benchmarks.service --null-model`` measures. It serves only where it is named
explicitly (``ONESTEP_BACKEND=null`` or a ``model_backends`` entry); ``auto`` never picks it.
"""

from __future__ import annotations

import numpy as np
import torch

from service.backends.base import Backend


class NullBackend(Backend):
    name = "null"

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        x = z.numpy() if isinstance(z, torch.Tensor) else z
        # The noise as an image (as EDM's uint8 conversion maps [-1, 1]): seed-dependent pixels, whose PNG is about
        # as large as a generated image's, at a few microseconds per image.
        return np.clip(x * 40.0 + 128.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
