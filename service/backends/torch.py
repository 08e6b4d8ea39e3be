"""PyTorch eager backend: the reference, and the fallback when nothing is exported."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from service.backends.base import Backend, BackendError
from service.config import Settings
from training.checkpoint import ModelConfig, load_model
from training.precond import OneStepGenerator

log = logging.getLogger(__name__)


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


def compile_generator(
    model: OneStepGenerator, device: torch.device, *, jit: bool, channels_last: bool, atol: float = 1e-5
) -> torch.nn.Module:
    """``model`` in channels-last layout and/or traced with TorchScript, checked against the eager model as loaded.

    Eager PyTorch re-takes the GIL between ops; a U-Net forward has hundreds of them, and each can wait for the
    event loop or an encoder thread to let the GIL go. A traced graph runs from start to end in C++. Channels-last
    weights (inputs are converted in :meth:`TorchBackend.run`) let oneDNN and cuDNN pick their NHWC kernels.
    The check runs at batch sizes other than the traced one; on any failure or disagreement the eager model, as
    loaded, is served (with a warning).
    """
    if not (jit or channels_last):
        return model
    conditional = model.label_dim > 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def example(n: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(n, *model.img_shape, generator=torch.Generator().manual_seed(n)).to(device)
        return (z, (torch.arange(n) % model.label_dim).to(device)) if conditional else (z,)

    def in_layout(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0].contiguous(memory_format=memory_format), *args[1:])

    model = model.eval()
    with torch.inference_mode(False), torch.no_grad():
        reference = {n: (args, model(*args)) for n in (1, 3) for args in [example(n)]}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # Tracer and deprecation warnings: shapes and constants are checked below instead.
            warnings.simplefilter("ignore")
            candidate = copy.deepcopy(model).to(memory_format=memory_format)
            if jit:
                candidate = torch.jit.trace(candidate, in_layout(example(2)), check_trace=False)
            for n, (args, expected) in reference.items():
                err = (candidate(*in_layout(args)) - expected).abs().max().item()
                if not err <= atol:
                    raise BackendError(f"it differs from eager by {err:.3g} at batch {n}")
    except Exception as exc:  # noqa: BLE001 - any failure means: serve the eager model
        log.warning("generator with jit=%s channels_last=%s not used (%s); serving eager", jit, channels_last, exc)
        return model
    return candidate


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        super().__init__(model_dir, config, settings)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        # Read here, on the inference thread that runs every batch: OpenMP keeps the thread count per thread.
        self._cpu_threads = torch.get_num_threads() if self.device.type == "cpu" else None
        model = load_model(model_dir, device=self.device)
        if not isinstance(model, OneStepGenerator):
            raise BackendError(f"{model_dir}: not a one-step generator")
        self.memory_format = torch.channels_last if settings.torch_channels_last else torch.contiguous_format
        self.model: torch.nn.Module = compile_generator(
            model, self.device, jit=settings.torch_jit, channels_last=settings.torch_channels_last
        )

    @property
    def cpu_threads(self) -> int | None:
        return self._cpu_threads

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            zt = torch.as_tensor(z).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            lt = None if labels is None else torch.from_numpy(labels).to(self.device, non_blocking=True)
            out = self.model(zt, lt) if lt is not None else self.model(zt)
            return to_uint8_nhwc(out).cpu().numpy()
