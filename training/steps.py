"""How one optimizer step's arithmetic runs on a device: precision (autocast, grad scaler) and accumulation rounds.

- ``--precision fp32|bf16|fp16|auto``: bf16 and fp16 run the forward passes under ``torch.autocast`` (CUDA or CPU);
  parameters, optimizer state and EMA stay float32. fp16 also scales the loss (``torch.amp.GradScaler``) so small
  gradients survive, and skips a step whose gradients overflowed. ``auto`` is bf16 on a CUDA GPU that has it,
  else fp32; a run records the precision it resolved to, so a resume keeps it.
- ``--batch-gpu N``: each rank's share of the global batch runs in rounds of N images whose gradients add up
  before the one optimizer step (each round's loss weighted by its share of the rank's batch), so a step equals
  the step on the whole batch at once, within float rounding, whatever N.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU with bfloat16 support, else fp32; other values unchanged."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward passes' context: ``torch.autocast`` in bf16/fp16, nothing in fp32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (disabled, it passes losses and steps through unchanged)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def accumulation_rounds(per_rank: int, batch_gpu: int | None) -> list[slice]:
    """The rows of each round of a rank's ``per_rank`` images: rounds of ``batch_gpu`` (None: one round)."""
    size = per_rank if batch_gpu is None else min(batch_gpu, per_rank)
    if size < 1 or per_rank % size:
        raise ValueError(f"--batch-gpu {batch_gpu} does not divide the per-rank batch of {per_rank} images")
    return [slice(start, start + size) for start in range(0, per_rank, size)]


@contextlib.contextmanager
def no_sync_unless(last: bool, module: torch.nn.Module) -> Iterator[None]:
    """DDP's ``no_sync`` for every round but the last (whose backward all-reduces the summed gradients)."""
    if last or not hasattr(module, "no_sync"):
        yield
    else:
        with module.no_sync():
            yield


__all__ = [
    "AUTOCAST_DTYPES",
    "PRECISIONS",
    "accumulation_rounds",
    "autocast",
    "grad_scaler",
    "no_sync_unless",
    "resolve_precision",
]
