"""PNG figures of an evaluation report (matplotlib, headless)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

MARKERS = "o*sD^vP"


def grid_array(images: torch.Tensor, cols: int) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 array [rows*H, cols*W, C] with a 1-pixel gap between tiles."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = max(math.ceil(n / cols), 1)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = x[i].permute(1, 2, 0).numpy()
    return out


def _show(ax: plt.Axes, arr: np.ndarray, title: str) -> None:
    if arr.shape[2] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_grid(images: torch.Tensor, path: Path, cols: int = 10) -> None:
    from PIL import Image

    arr = grid_array(images, cols)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


def sample_grids(panels: Sequence[tuple[str, torch.Tensor]], path: Path, cols: int = 10) -> None:
    """Sample grids side by side, one panel per set (same seeds and classes in every panel)."""
    n = len(panels)
    per_row = min(n, 4)
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(3.2 * per_row, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, images) in zip(axes.flat, panels, strict=False):
        _show(ax, grid_array(images, cols), title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fd_vs_nfe(
    teachers: dict[str, list[tuple[int, float]]],
    one_step: dict[str, float],
    path: Path,
    reference_fd: float | None = None,
    metric_name: str = "FD",
) -> None:
    """Teacher FD at each NFE (lines) with the one-step generators as points at NFE = 1."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in teachers.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{label} (Heun)")
    for i, (label, fd) in enumerate(one_step.items()):
        ax.scatter([1], [fd], marker=MARKERS[(i + 1) % len(MARKERS)], s=120, zorder=3, label=f"{label} (1 step)")
        ax.axhline(fd, ls="--", lw=0.8, color=ax.collections[-1].get_facecolor()[0])
    if reference_fd is not None:
        ax.axhline(reference_fd, ls=":", color="gray", label="real vs real")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({1, *(n for points in teachers.values() for n, _ in points)})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(metric_name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spectra(curves: dict[str, np.ndarray], path: Path, reference: str | None = None) -> None:
    """Radially averaged power spectra (left) and their ratio to the reference spectrum (right)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, s in curves.items():
        r = np.arange(len(s))
        ax1.plot(r[1:], s[1:], label=label)
        if reference is not None and reference in curves:
            ax2.plot(r[1:], s[1:] / np.maximum(curves[reference][1:], 1e-20), label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("spatial frequency (cycles per image)")
    ax1.set_ylabel("power")
    ax1.set_title("radially averaged power spectrum")
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("spatial frequency (cycles per image)")
    ax2.set_ylabel(f"power / power of {reference}")
    ax2.set_title("relative to real images")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fd_vs_images(
    curves: dict[str, list[dict[str, Any]]],
    path: Path,
    teacher: dict[str, Any] | None = None,
    teacher_images: int | None = None,
    crossings: dict[str, dict[str, Any]] | None = None,
    metric_name: str = "FD",
) -> None:
    """The budget curve: FD (left) and recall (right) of each fine-tune run's snapshots against the fine-tune
    images seen (a top axis in % of the teacher's pre-training images), error bars where a point is a mean over
    seeds, the teacher's best FD at any NFE (and its recall there) as a horizontal line, and each curve's
    crossing of that line marked."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, points) in enumerate(curves.items()):
        points = sorted(points, key=lambda p: p["images_seen"])
        x = [p["images_seen"] / 1000 for p in points]
        marker = MARKERS[i % len(MARKERS)]
        fd_err = [p["fd_sd"] for p in points] if "fd_sd" in points[0] else None
        bars = ax1.errorbar(x, [p["fd"] for p in points], yerr=fd_err, marker=marker, capsize=3, label=label)
        color = bars[0].get_color()
        recall_err = [p["recall_sd"] for p in points] if "recall_sd" in points[0] else None
        ax2.errorbar(x, [p["recall"] for p in points], yerr=recall_err, marker=marker, capsize=3, color=color,
                     label=label)  # fmt: skip
        c = (crossings or {}).get(label)
        if c and c["crosses"]:
            ax1.scatter([c["images_seen"] / 1000], [c["fd"]], marker="X", s=140, color=color, zorder=4,
                        edgecolors="black", label=f"{label} reaches the teacher")  # fmt: skip
    if teacher:
        text = f"teacher best ({teacher['label']}, NFE {teacher['nfe']})"
        ax1.axhline(teacher["fd"], ls="--", lw=1, color="gray", label=text)
        ax2.axhline(teacher["recall"], ls="--", lw=1, color="gray", label=text)
    for ax, ylabel in ((ax1, metric_name), (ax2, "recall")):
        ax.set_xlabel("fine-tune images seen (thousands)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if teacher_images:
            top = ax.secondary_xaxis(
                "top", functions=(lambda k: k * 1e5 / teacher_images, lambda q: q * teacher_images / 1e5)
            )
            top.set_xlabel("% of the teacher's pre-training images")
    ax1.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
