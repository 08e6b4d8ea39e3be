"""Parity between two implementations of one generator on seeded batches (PyTorch vs ONNX Runtime vs TensorRT).

A runner is any callable ``(z [N,C,H,W] float32, labels [N] int64 | None) -> {output name: array}``; outputs
compared are ``images`` (max abs difference against ``atol``) and, when both have it, ``images_uint8``
(which may differ by a rounding step where ``images`` sits on a boundary, so its bound follows ``atol``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.graph import OUTPUT_IMAGES, OUTPUT_UINT8, to_uint8_nhwc
from training.precond import OneStepGenerator
from training.sampling import seeded_noise

Runner = Callable[[np.ndarray, np.ndarray | None], Mapping[str, np.ndarray]]
DEFAULT_BATCHES = (1, 7, 64)


class ParityError(RuntimeError):
    """Two implementations of the same generator disagree beyond tolerance; ``report`` holds the figures."""

    def __init__(self, message: str, report: ParityReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class BatchParity:
    batch: int
    max_abs_diff: float
    mean_abs_diff: float
    uint8_max_diff: int | None = None


@dataclass
class ParityReport:
    reference: str
    candidate: str
    atol: float
    results: list[BatchParity] = field(default_factory=list)

    @property
    def uint8_tol(self) -> int:
        return max(1, math.ceil(self.atol * 127.5))

    def batch_ok(self, r: BatchParity) -> bool:
        ok = math.isfinite(r.max_abs_diff) and r.max_abs_diff <= self.atol
        return ok and (r.uint8_max_diff is None or r.uint8_max_diff <= self.uint8_tol)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(self.batch_ok(r) for r in self.results)

    @property
    def max_abs_diff(self) -> float:
        return max((r.max_abs_diff for r in self.results), default=float("nan"))

    def table(self) -> str:
        lines = [
            f"parity {self.candidate} vs {self.reference} (atol {self.atol:g}; uint8 within {self.uint8_tol})",
            f"{'batch':>6} {'max |diff|':>12} {'mean |diff|':>12} {'uint8 max':>10}  result",
        ]
        for r in self.results:
            u8 = "-" if r.uint8_max_diff is None else str(r.uint8_max_diff)
            verdict = "ok" if self.batch_ok(r) else "FAIL"
            lines.append(f"{r.batch:>6} {r.max_abs_diff:>12.3e} {r.mean_abs_diff:>12.3e} {u8:>10}  {verdict}")
        return "\n".join(lines)

    def raise_if_failed(self, what: Path | str | None = None) -> None:
        if not self.passed:
            where = f"{what}: " if what is not None else ""
            raise ParityError(f"{where}{self.candidate} disagrees with {self.reference}\n{self.table()}", self)


def seeded_inputs(
    img_shape: Sequence[int], label_dim: int, batch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Noise rows from seeds ``seed .. seed+batch-1`` (as the service draws them) and seeded class labels."""
    z = seeded_noise(range(seed, seed + batch), tuple(img_shape)).numpy()
    labels = None
    if label_dim > 0:
        labels = np.random.default_rng(seed).integers(0, label_dim, size=batch, dtype=np.int64)
    return z, labels


def torch_runner(generator: OneStepGenerator) -> Runner:
    """The PyTorch reference with the exported graph's outputs (float32, on the generator's device)."""
    device = next(generator.parameters()).device

    def run(z: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            zt = torch.from_numpy(z).to(device)
            lt = None if labels is None else torch.from_numpy(labels).to(device)
            images = generator(zt, lt).float().clamp(-1, 1)
            return {OUTPUT_IMAGES: images.cpu().numpy(), OUTPUT_UINT8: to_uint8_nhwc(images).cpu().numpy()}

    return run


def compare(
    reference: Runner,
    candidate: Runner,
    *,
    img_shape: Sequence[int],
    label_dim: int,
    batches: Sequence[int] = DEFAULT_BATCHES,
    atol: float = 1e-4,
    seed: int = 0,
    names: tuple[str, str] = ("reference", "candidate"),
) -> ParityReport:
    report = ParityReport(reference=names[0], candidate=names[1], atol=atol)
    for i, batch in enumerate(batches):
        z, labels = seeded_inputs(img_shape, label_dim, batch, seed=seed + 100_003 * i)
        ref, out = reference(z, labels), candidate(z, labels)
        a = np.asarray(ref[OUTPUT_IMAGES], dtype=np.float32)
        b = np.asarray(out[OUTPUT_IMAGES], dtype=np.float32)
        if a.shape != b.shape:
            raise ParityError(f"{names[1]} returned images of shape {b.shape}, {names[0]} {a.shape}")
        diff = np.abs(a - b)
        u8 = None
        if OUTPUT_UINT8 in ref and OUTPUT_UINT8 in out:
            ra, rb = ref[OUTPUT_UINT8], out[OUTPUT_UINT8]
            if ra.shape != rb.shape or rb.dtype != np.uint8:
                raise ParityError(f"{names[1]} returned {OUTPUT_UINT8} {rb.dtype}{rb.shape}, expected uint8{ra.shape}")
            u8 = int(np.abs(ra.astype(np.int16) - rb.astype(np.int16)).max())
        max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        report.results.append(BatchParity(batch, max_diff, float(diff.mean()), u8))
    return report
