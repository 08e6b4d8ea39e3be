"""PyTorch eager backend: the reference, and the fallback when nothing is exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.backends.base import Backend, BackendError
from service.config import Settings
from training.checkpoint import load_model
from training.precond import OneStepGenerator


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {name!r}: CUDA is not available here")
    return device


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NHWC, rounding as EDM's generate.py does."""
    return (x * 127.5 + 128).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir: Path, config: dict[str, Any], settings: Settings):
        super().__init__(model_dir, config, settings)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        model = load_model(model_dir, device=self.device)
        if not isinstance(model, OneStepGenerator):
            raise BackendError(f"{model_dir}: not a one-step generator")
        self.model = model

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            zt = torch.as_tensor(z).to(self.device, non_blocking=True)
            lt = None if labels is None else torch.from_numpy(labels).to(self.device, non_blocking=True)
            return to_uint8_nhwc(self.model(zt, lt)).cpu().numpy()
