"""Inference backends, built by name; each imports its runtime only when chosen."""

from __future__ import annotations

from pathlib import Path

from service.backends.base import Backend, BackendError
from service.config import Settings
from training.checkpoint import ModelConfig

__all__ = ["Backend", "BackendError", "create_backend"]


def create_backend(name: str, model_dir: Path, config: ModelConfig, settings: Settings) -> Backend:
    if name == "torch":
        from service.backends.torch import TorchBackend

        return TorchBackend(model_dir, config, settings)
    if name == "onnxruntime":
        from service.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_dir, config, settings)
    if name == "tensorrt":
        from service.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model_dir, config, settings)
    if name == "null":  # benchmarks only (no model compute); served only when named explicitly
        from service.backends.null import NullBackend

        return NullBackend(model_dir, config, settings)
    raise BackendError(f"unknown backend {name!r}; expected torch, onnxruntime or tensorrt")
