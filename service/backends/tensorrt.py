"""TensorRT backend: runs ``model.plan`` (built by ``python -m exporters tensorrt``) with exporters.tensorrt.

A plan with several optimization profiles (batch buckets) makes the batcher pad each batch up to the top of
its bucket (``preferred_batch_sizes``): the shapes the engine was tuned and warmed for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.backends.base import Backend, BackendError
from service.config import Settings
from training.checkpoint import ModelConfig

PLAN_NAME = "model.plan"


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        super().__init__(model_dir, config, settings)
        if not torch.cuda.is_available():
            raise BackendError("tensorrt backend needs a CUDA GPU")
        try:
            from exporters.tensorrt import TensorRTRunner
        except ImportError as e:
            raise BackendError(
                f"tensorrt backend needs the tensorrt package: pip install onestep[tensorrt] ({e})"
            ) from e
        plan = self.model_dir / PLAN_NAME
        if not plan.is_file():
            raise BackendError(f"{plan}: not found; build it with `python -m exporters tensorrt {self.model_dir}`")
        self.runner = TensorRTRunner(plan)
        if "images_uint8" not in self.runner.output_names:
            raise BackendError(f"{plan}: no 'images_uint8' output (outputs: {self.runner.output_names})")
        self.max_supported_batch = self.runner.max_batch
        if len(self.runner.profiles) > 1:
            self.preferred_batch_sizes = tuple(sorted({hi for _, hi in self.runner.profiles}))

    def warmup_sizes(self, max_batch_size: int) -> list[int]:
        if self.preferred_batch_sizes:
            return super().warmup_sizes(max_batch_size)
        return list(range(1, min(max_batch_size, self.runner.max_batch) + 1))

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        return self.runner.run_device(z, labels)["images_uint8"].cpu().numpy()

    def close(self) -> None:
        self.runner = None
