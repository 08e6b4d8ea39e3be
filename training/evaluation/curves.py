"""The budget curve: FD and recall of a fine-tune run's ``network-snapshot-*`` model dirs against fine-tune images
seen, also as a share of the teacher's pre-training images, and where the curve crosses the teacher's best FD at
any NFE (or the gap at its last point)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.checkpoint import load_model
from training.evaluation.comparable import differences, read_metrics
from training.evaluation.evaluator import Evaluator, SetResult
from training.evaluation.options import EvalOptions
from training.evaluation.protocol import mean_sd
from training.evaluation.samples import balanced_labels, generator_fn
from training.evaluation.sources import Source


def teacher_images(src: Source) -> int | None:
    """The pre-training images of the teacher a fine-tune started from, as its config records them."""
    record = (src.config.training or {}).get("teacher")
    value = record.get("images_seen") if isinstance(record, Mapping) else None
    return int(value) if isinstance(value, int | float) and value > 0 else None


def pick_snapshots(snapshots: Sequence[tuple[int, Any]], kimg: Sequence[float] | None) -> list[tuple[int, Any]]:
    """The snapshots nearest each of ``kimg`` (fine-tune images / 1000), once each and in order of images seen; all
    of them where ``kimg`` is None. A run of 60 snapshots costs 60 sample sets; a curve needs a handful."""
    if kimg is None:
        return list(snapshots)
    if not snapshots:
        return []
    chosen = {min(snapshots, key=lambda s: (abs(s[0] - k * 1000), s[0])) for k in kimg}
    return sorted(chosen, key=lambda s: s[0])


def snapshot_curve(
    src: Source, evaluator: Evaluator, options: EvalOptions, final: SetResult, total: int | None = None
) -> list[dict[str, Any]]:
    """The metrics of the snapshots of a fine-tune run dir (every one, or those nearest ``options.curve_kimg``)
    against fine-tune images seen, all from the first ``curve_samples`` seeds of the run's seed range (no bootstrap
    interval: a curve point is not a headline). ``total``: the teacher's pre-training images, where the run's
    config records none."""
    seeds = options.curve_seeds
    count = len(seeds)
    total = teacher_images(src) or total
    points = []
    for images_seen, model_dir in pick_snapshots(src.snapshots, options.curve_kimg):
        if model_dir == src.model_dir and count == options.num_samples:
            res = final  # already measured with the same noise
        else:
            model = load_model(model_dir, device=options.device)
            labels = balanced_labels(count, model.label_dim)
            fn = generator_fn(model, "generator", 1, seeds, labels, options.device)
            res, _, _ = evaluator.measure(
                f"{src.label} @ {images_seen / 1000:g} kimg", "one-step", fn, labels, count, 1, images_seen,
                seeds=seeds, interval=False,
            )  # fmt: skip
        point = {"images_seen": images_seen, "snapshot": model_dir.name, **asdict(res.metrics)}
        point["teacher_fraction"] = images_seen / total if total else None
        points.append(point)
    return points


def _nearest_unused(points: Sequence[Mapping[str, Any]], target: float, used: set[int]) -> Mapping[str, Any] | None:
    """The point nearest ``target`` images among those not yet paired, if it lies within 10% of ``target`` (at
    least 2000 images): seeds resumed at different offsets snapshot a few hundred images apart, while a point a
    whole curve step away is another budget."""
    free = [p for p in points if p["images_seen"] not in used]
    if not free:
        return None
    best = min(free, key=lambda p: (abs(p["images_seen"] - target), p["images_seen"]))
    return best if abs(best["images_seen"] - target) <= max(0.1 * target, 2000) else None


def group_curves(
    curves: Mapping[str, list[dict[str, Any]]], groups: Mapping[str, Sequence[str]], kimg: Sequence[float] | None = None
) -> dict[str, Any]:
    """Mean ± sd of FD and recall over a group's members, point by point. The points are the members' snapshots
    nearest each of ``kimg`` (the curve's requested budgets; without it, the first member's points), one per member
    and each used once, so seeds whose snapshots sit a few hundred images apart still pair up; a budget some
    member has no point near is left out, and a group whose members lack a curve or pair nowhere gets none. A
    point's ``images_seen`` is the members' mean, ``member_images_seen`` each member's own."""
    out: dict[str, Any] = {}
    for name, labels in groups.items():
        if not labels or any(label not in curves for label in labels):
            continue
        members = [sorted(curves[label], key=lambda p: p["images_seen"]) for label in labels]
        targets = [k * 1000 for k in kimg] if kimg else [p["images_seen"] for p in members[0]]
        used: list[set[int]] = [set() for _ in members]
        points = []
        for target in sorted(targets):
            chosen = [_nearest_unused(m, target, u) for m, u in zip(members, used, strict=True)]
            if any(c is None for c in chosen):
                continue
            for c, u in zip(chosen, used, strict=True):
                u.add(c["images_seen"])
            seen = [c["images_seen"] for c in chosen]
            x = sum(seen) / len(seen)
            fd = mean_sd([c["fd"] for c in chosen])
            recall = mean_sd([c["recall"] for c in chosen])
            first = chosen[0]
            fraction = first.get("teacher_fraction")
            points.append({
                "images_seen": x, "member_images_seen": seen, "fd": fd.mean, "fd_sd": fd.sd,
                "recall": recall.mean, "recall_sd": recall.sd,
                "teacher_fraction": fraction * x / first["images_seen"] if fraction and first["images_seen"] else None,
                "count": fd.count,
            })  # fmt: skip
        if points:
            out[name] = points
    return out


def crossing(points: Sequence[Mapping[str, Any]], target: float) -> dict[str, Any]:
    """Where FD first reaches ``target`` (the teacher's best), linearly interpolated between snapshots; where it
    never does, the gap (FD - target) at the last point."""
    pts = sorted((p["images_seen"], p["fd"], p.get("teacher_fraction")) for p in points)
    if not pts:
        raise ValueError("a curve without points")
    prev = None
    for x, y, frac in pts:
        if y <= target:
            at = float(x)
            if prev is not None and prev[1] > y:
                at = prev[0] + (prev[1] - target) / (prev[1] - y) * (x - prev[0])
            share = at * frac / x if frac and x else None
            return {"crosses": True, "images_seen": at, "teacher_fraction": share, "fd": target}
        prev = (x, y)
    x, y, frac = pts[-1]
    return {"crosses": False, "images_seen": float(x), "teacher_fraction": frac, "fd": y, "gap": y - target}


def budget_summary(
    curves: Mapping[str, list[dict[str, Any]]], teacher: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """For each plotted curve: its crossing of the teacher's best FD, or its gap at the last point."""
    if not teacher:
        return {}
    return {label: crossing(points, teacher["fd"]) for label, points in curves.items() if points}


def plotted_curves(
    curves: Mapping[str, list[dict[str, Any]]], groups: Mapping[str, Sequence[str]], means: Mapping[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """The curves of the budget plot: a group's mean curve in place of its members', every other run's own."""
    grouped = {label for name in means for label in groups[name]}
    out = {label: points for label, points in curves.items() if label not in grouped}
    out.update({f"{name} (mean of {len(groups[name])} seeds)": points for name, points in means.items()})
    return out


def earlier_teacher(path: str | Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher's best of an earlier report (its ``metrics.json``), as the target of this run's budget curves.

    A multi-step teacher's set costs hours on a CPU; its figure is reused only where it measures the same thing
    (:func:`training.evaluation.comparable.differences` finds nothing against ``expected``, this run's record with
    ``seeds`` the curve's), else a ``ValueError`` names what differs."""
    earlier = read_metrics(path, "--teacher-metrics")
    best = (earlier.get("summary") or {}).get("teacher_best")
    if not isinstance(best, dict) or not isinstance(best.get("fd"), int | float):
        raise ValueError(f"--teacher-metrics {path}: the report evaluated no teacher")
    differ = differences(earlier, expected)
    if differ:
        raise ValueError(
            f"--teacher-metrics {path} measured something else ({differ}); its teacher's FD is no target for "
            "these curves"
        )
    return {**best, "from": str(path)}
