"""The report of an evaluation run: its summary, ``report.md``, ``metrics.json`` and the PNG plots."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.evaluation import plots
from training.evaluation.evaluator import SetResult


def summarize(results: Sequence[SetResult]) -> dict[str, Any]:
    """The claims of the paper in numbers: best teacher FD (and its NFE) against each one-step generator."""
    teachers = [r for r in results if r.kind == "teacher"]
    one_step = [r for r in results if r.kind == "one-step"]
    out: dict[str, Any] = {}
    real = [r for r in results if r.kind == "real"]
    if real:
        out["real_fd_floor"] = real[0].metrics.fd
    if teachers:
        best = min(teachers, key=lambda r: r.metrics.fd)
        out["teacher_best"] = {"label": best.label, "nfe": best.nfe, "fd": best.metrics.fd}
        if best.images_seen:
            out["teacher_best"]["images_seen"] = best.images_seen
        accs = [r.metrics.class_accuracy for r in teachers if r.metrics.class_accuracy is not None]
        if accs:
            out["teacher_best_class_accuracy"] = max(accs)
    out["one_step"] = {}
    for r in one_step:
        entry: dict[str, Any] = {"fd": r.metrics.fd, "class_accuracy": r.metrics.class_accuracy}
        if teachers:
            entry["fd_minus_teacher_best"] = r.metrics.fd - out["teacher_best"]["fd"]
            entry["beats_teacher_best"] = r.metrics.fd <= out["teacher_best"]["fd"]
            teacher_images = out["teacher_best"].get("images_seen")
            if teacher_images and r.images_seen:
                entry["images_seen"] = r.images_seen
                entry["fraction_of_teacher_images"] = r.images_seen / teacher_images
        out["one_step"][r.label] = entry
    return out


def environment(device: str) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def write_plots(
    out: Path,
    results: Sequence[SetResult],
    grids: Sequence[tuple[str, torch.Tensor]],
    spectra: dict[str, np.ndarray],
    curves: dict[str, list[dict[str, Any]]],
    metric_name: str,
) -> None:
    teachers: dict[str, list[tuple[int, float]]] = {}
    one_step: dict[str, float] = {}
    for r in results:
        if r.kind == "teacher":
            teachers.setdefault(r.label, []).append((r.nfe or 1, r.metrics.fd))
        elif r.kind == "one-step":
            one_step[r.label] = r.metrics.fd
    real = next((r.metrics.fd for r in results if r.kind == "real"), None)
    plots.fd_vs_nfe(teachers, one_step, out / "fd_vs_nfe.png", real, metric_name)
    plots.sample_grids([g for g in grids if len(g[1])], out / "samples.png")
    plots.spectra(spectra, out / "spectra.png", reference="real")
    if curves:
        baselines = {}
        for label, points in teachers.items():
            best = min(points, key=lambda p: p[1])
            baselines[f"{label} best (NFE {best[0]})"] = best[1]
        plots.fd_vs_images(
            {k: [(p["images_seen"], p["fd"]) for p in v] for k, v in curves.items()},
            out / "fd_vs_images.png",
            baselines,
            metric_name,
        )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sig(value: float | None) -> str:
    """Four significant digits: FD and KID span orders of magnitude across feature spaces."""
    return "–" if value is None else f"{value:.4g}"


def render_report(m: dict[str, Any]) -> str:
    name = m["metric_name"]
    opts = m["options"]
    split = m.get("reference_split", "test")  # None: a folder, which has no splits
    last_seed = opts["seed"] + opts["num_samples"] - 1
    split_name = f"{split} " if split else ""
    if m.get("classifier"):
        features = (
            f"Features: the evaluation classifier `{m['classifier']['dir']}` "
            f"(test accuracy {_fmt(m['classifier']['test_accuracy'], 4)}, {m['classifier']['feature_dim']}-d)."
        )
    else:
        f = m["features"]
        features = (
            f"Features: {f['description']} ({f['feature_dim']}-d, needs no labels; extractor "
            f"`{f['fingerprint'][:12]}`); no class accuracy."
        )
    lines = [
        "# Evaluation report",
        "",
        f"Data: `{m['data']}` at {m['resolution']}×{m['resolution']}; reference: {m['reference_images']} "
        f"{split_name}images. {opts['num_samples']} samples per set (seeds {opts['seed']}..{last_seed}, "
        "classes balanced, the same noise for every model). " + features,
        "",
        f"| set | sampler | NFE | training images | {name} | KID ×10³ | precision | recall | class accuracy "
        + ("| FID " if m.get("inception") else "")
        + "| images/s |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if m.get("inception") else "") + "---|",
    ]
    sampler = {"real": "real images", "teacher": "Heun", "one-step": "one step"}
    for r in m["results"]:
        seen = f"{r['images_seen'] / 1e6:.3f}M" if r.get("images_seen") else "–"
        row = (
            f"| {r['label']} | {sampler[r['kind']]} | {_fmt(r['nfe'])} | {seen} | {_sig(r['fd'])} "
            f"| {_sig(r['kid'] * 1e3)} | {_fmt(r['precision'])} | {_fmt(r['recall'])} "
            f"| {_fmt(r['class_accuracy'], 4)} "
        )
        if m.get("inception"):
            row += f"| {_sig(r.get('fid'))} "
        row += f"| {_fmt(r['images_per_s'], 1) if r['kind'] != 'real' else '–'} |"
        lines.append(row)
    lines += [
        "",
        "Training images: pre-training images for teachers, fine-tune images for one-step generators. "
        "KID is unbiased (can be slightly negative). Class accuracy: share of samples the classifier assigns "
        "to the class they were generated for (for real images: its accuracy on them).",
    ]
    s = m["summary"]
    lines += ["", "## Summary", ""]
    if "real_fd_floor" in s:
        if split:
            what = f"{opts['num_samples']} {'test' if split == 'train' else 'train'} images against the {split} set"
        else:  # a folder: the floor's images are among the reference's, so it reads lower than a held-out set's
            what = f"{opts['num_samples']} images drawn from the reference folder itself, a lower bound"
        lines.append(f"- Real-vs-real floor ({what}): {name} {_sig(s['real_fd_floor'])}.")
    if "teacher_best" in s:
        tb = s["teacher_best"]
        lines.append(f"- Best teacher: {tb['label']} at NFE {tb['nfe']}, {name} {_sig(tb['fd'])}.")
    for label, e in s.get("one_step", {}).items():
        text = f"- One-step {label}: {name} {_sig(e['fd'])}"
        if "fd_minus_teacher_best" in e:
            verdict = "matches or beats" if e["beats_teacher_best"] else "is worse than"
            text += f" ({e['fd_minus_teacher_best']:+.4g}; {verdict} the teacher's best)"
        if "fraction_of_teacher_images" in e:
            text += (
                f", after {e['images_seen'] / 1e6:.3f}M fine-tune images "
                f"({100 * e['fraction_of_teacher_images']:.1f}% of the teacher's pre-training images)"
            )
        lines.append(text + ".")
    lines += ["", "## Plots", "", f"![{name} against NFE](fd_vs_nfe.png)", "", "![samples](samples.png)", ""]
    lines += ["![radially averaged power spectra](spectra.png)", ""]
    if m["curves"]:
        lines += [f"![{name} against fine-tune images seen](fd_vs_images.png)", ""]
        for label, points in m["curves"].items():
            lines += [f"### {label}: {name} against fine-tune images seen", "", f"| images seen | {name} | KID ×10³ |"]
            lines += ["|---|---|---|"]
            lines += [f"| {p['images_seen']} | {_sig(p['fd'])} | {_sig(p['kid'] * 1e3)} |" for p in points]
            lines.append("")
    env = m["environment"]
    lines += [
        "## Environment",
        "",
        f"torch {env['torch']} on {env.get('gpu', env['cpu'])} ({env['device']}, {env['torch_threads']} threads); "
        f"wall time {m['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out: Path,
    metrics: dict[str, Any],
    results: Sequence[SetResult],
    grids: Sequence[tuple[str, torch.Tensor]],
    spectra: dict[str, np.ndarray],
    curves: dict[str, list[dict[str, Any]]],
) -> None:
    """The plots, ``metrics.json`` and ``report.md`` into ``out``."""
    write_plots(out, results, grids, spectra, curves, metrics["metric_name"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_report(metrics))
