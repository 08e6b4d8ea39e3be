"""ONNX Runtime backend: serves ``model.onnx``, exported once next to the weights and cached there.

The cached graph records the SHA-256 of the config.json and weights it was exported from, and its graph
format (``exporters.onnx.export_is_current``); when either file changed, or the file is from an older exporter,
it is exported again and replaced atomically, so a model dir whose weights were swapped never serves a stale
graph. Where the model dir cannot be written (a read-only mount), the export goes to the system's temporary
folder instead, named by the weights' hash.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from service.backends.base import Backend, BackendError, usable_cpus
from service.config import Settings
from training.checkpoint import ModelConfig

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"


def graph_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata, with the onnx package when installed, else through an ONNX Runtime session."""
    try:
        from exporters.onnx import read_metadata

        return read_metadata(path)
    except ImportError:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)


def _why_stale(path: Path, model_dir: Path) -> str | None:
    """None when ``path`` is an export of ``model_dir``'s current config and weights, else why it is not."""
    from exporters.onnx import export_is_current

    if not path.is_file():
        return "missing"
    try:
        return export_is_current(graph_metadata(path), model_dir)
    except Exception as e:  # unreadable or truncated: export again
        return f"unreadable ({type(e).__name__}: {e})"


def cached_onnx(model_dir: Path) -> Path:
    """``model_dir/model.onnx``, exported (again) unless it exists and matches the model dir's config and weights.

    A current export is served from a read-only model dir too (an image's models, exported at build time); a model
    dir this process cannot write to gets a new export in the temporary folder, named by the weights' hash.
    """
    from exporters.onnx import export_onnx
    from training.checkpoint import file_sha256, read_model_config

    path = model_dir / ONNX_NAME
    why = _why_stale(path, model_dir)
    if why is None:
        return path
    if not os.access(model_dir, os.W_OK):
        sha = file_sha256(model_dir / read_model_config(model_dir).weights)[:16]
        path = Path(tempfile.gettempdir()) / "onestep-onnx" / f"{model_dir.name}-{sha}.onnx"
        log.warning("%s is read-only: the ONNX export is cached at %s", model_dir, path)
        why = _why_stale(path, model_dir)
        if why is None:
            return path
    log.info("%s: exporting (%s)", path, why)
    return export_onnx(model_dir, path)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        super().__init__(model_dir, config, settings)
        try:
            from exporters.onnx import onnx_session
        except ImportError as e:
            raise BackendError(f"onnxruntime backend needs exporters.onnx and onnxruntime ({e})") from e
        try:
            path = cached_onnx(self.model_dir)
        except ImportError as e:
            raise BackendError(f"exporting {self.model_dir / ONNX_NAME} needs onnx and onnxscript ({e})") from e
        self.onnx_path = path
        self.session = onnx_session(
            path,
            intra_op_threads=settings.ort_intra_op_threads,
            allow_spinning=settings.ort_allow_spinning,
            spin_duration_us=settings.ort_spin_duration_us,
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
