"""ONNX Runtime backend: exports ``model.onnx`` next to the weights when it is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.backends.base import Backend, BackendError, usable_cpus
from service.config import Settings
from training.checkpoint import ModelConfig

ONNX_NAME = "model.onnx"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        super().__init__(model_dir, config, settings)
        try:
            from exporters.onnx import export_onnx, onnx_session
        except ImportError as e:
            raise BackendError(f"onnxruntime backend needs exporters.onnx and onnxruntime ({e})") from e
        path = self.model_dir / ONNX_NAME
        if not path.is_file():
            export_onnx(self.model_dir)
        if not path.is_file():
            raise BackendError(f"{path}: export did not produce the ONNX file")
        self.session = onnx_session(
            path,
            intra_op_threads=settings.ort_intra_op_threads,
            allow_spinning=settings.ort_allow_spinning,
            denormal_as_zero=True,
        )
        names = {i.name for i in self.session.get_inputs()}
        if "z" not in names:
            raise BackendError(f"{path}: graph has no input 'z' (inputs: {sorted(names)})")
        self._with_labels = "class_labels" in names
        self._outputs = ["images_uint8"]

    @property
    def cpu_threads(self) -> int | None:
        # CPU execution provider; unset, ONNX Runtime starts one intra-op thread per core.
        return self.settings.ort_intra_op_threads or usable_cpus()

    @property
    def spins_between_runs(self) -> bool:
        return self.settings.ort_allow_spinning

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        zn = z.numpy() if isinstance(z, torch.Tensor) else z
        feeds: dict[str, np.ndarray] = {"z": zn}
        if self._with_labels:
            feeds["class_labels"] = labels if labels is not None else np.zeros(zn.shape[0], np.int64)
        return self.session.run(self._outputs, feeds)[0]

    def close(self) -> None:
        self.session = None
