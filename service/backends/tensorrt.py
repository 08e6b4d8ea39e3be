"""TensorRT backend: runs ``model.plan`` (built by ``python -m exporters tensorrt``) on one CUDA stream.

One optimization profile per batch bucket: when the plan has several, batches are padded up to the top of
their bucket (``preferred_batch_sizes``), the shapes the engine was tuned for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.backends.base import Backend, BackendError
from service.config import Settings

PLAN_NAME = "model.plan"
_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "UINT8": torch.uint8,
}


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_dir: Path, config: dict[str, Any], settings: Settings):
        super().__init__(model_dir, config, settings)
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendError("tensorrt backend needs the tensorrt package (pip install onestep[tensorrt])") from e
        if not torch.cuda.is_available():
            raise BackendError("tensorrt backend needs a CUDA GPU")
        plan = self.model_dir / PLAN_NAME
        if not plan.is_file():
            raise BackendError(f"{plan}: not found; build it with `python -m exporters tensorrt {self.model_dir}`")
        self._trt = trt
        self.device = torch.device("cuda")
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"{plan}: TensorRT could not deserialize it (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if "z" not in self.inputs or "images_uint8" not in self.outputs:
            raise BackendError(f"{plan}: expected input 'z' and output 'images_uint8', got {names}")
        # (min, max) batch of each profile, from input 'z'.
        self.profiles = []
        for p in range(self.engine.num_optimization_profiles):
            lo, _opt, hi = self.engine.get_tensor_profile_shape("z", p)
            self.profiles.append((int(lo[0]), int(hi[0])))
        if len(self.profiles) > 1:
            self.preferred_batch_sizes = tuple(sorted({hi for _, hi in self.profiles}))
        self._profile = -1

    def _dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self.engine.get_tensor_dtype(name).name]

    def _pick_profile(self, n: int) -> int:
        for i, (lo, hi) in enumerate(self.profiles):
            if lo <= n <= hi:
                return i
        raise BackendError(f"batch {n} is outside every TensorRT profile {self.profiles}")

    def warmup_sizes(self, max_batch_size: int) -> list[int]:
        top = max(hi for _, hi in self.profiles)
        if self.preferred_batch_sizes:
            return [s for s in self.preferred_batch_sizes if s <= max(max_batch_size, self.preferred_batch_sizes[0])]
        return list(range(1, min(max_batch_size, top) + 1))

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        n = int(z.shape[0])
        profile = self._pick_profile(n)
        stream = self.stream
        with torch.cuda.stream(stream):
            if profile != self._profile:
                self.context.set_optimization_profile_async(profile, stream.cuda_stream)
                self._profile = profile
            feeds = {"z": torch.as_tensor(z).to(self.device, self._dtype("z"), non_blocking=True).contiguous()}
            if "class_labels" in self.inputs:
                lab = torch.zeros(n, dtype=torch.int64) if labels is None else torch.from_numpy(labels)
                feeds["class_labels"] = lab.to(self.device, self._dtype("class_labels"), non_blocking=True)
            for name, t in feeds.items():
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._dtype(name), device=self.device)
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise BackendError("TensorRT execution failed")
            host = outs["images_uint8"].to("cpu", non_blocking=False)
        return host.numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
