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
from training.evaluation.groups import mean_of


def summarize(results: Sequence[SetResult], groups: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The claims of the paper in numbers: best teacher FD (and its NFE) against each one-step generator.

    A group of fine-tune seeds counts as one entry with its mean over the seeds (its sd and per-seed figures
    beside it), never its best seed: the teacher's best is the best NFE of a teacher (group mean), and each
    one-step variant is compared with it by its mean.
    """
    units = [_unit(r) for r in results if r.group is None] + [_group_unit(g) for g in groups]
    teachers = [u for u in units if u["kind"] == "teacher"]
    one_step = [u for u in units if u["kind"] == "one-step"]
    out: dict[str, Any] = {}
    real = [r for r in results if r.kind == "real"]
    if real:
        out["real_fd_floor"] = real[0].metrics.fd
    if teachers:
        best = min(teachers, key=lambda u: u["fd"])
        out["teacher_best"] = {k: best[k] for k in ("label", "nfe", "fd", "recall", "class_accuracy")}
        if best["images_seen"]:
            out["teacher_best"]["images_seen"] = best["images_seen"]
        accs = [u["class_accuracy"] for u in teachers if u["class_accuracy"] is not None]
        if accs:
            out["teacher_best_class_accuracy"] = max(accs)
    out["one_step"] = {}
    for u in one_step:
        entry: dict[str, Any] = {k: u[k] for k in ("fd", "recall", "class_accuracy")}
        if "seeds" in u:
            entry.update(fd_sd=u["fd_sd"], fine_tune_seeds=u["seeds"], per_seed_fd=u["per_seed_fd"])
        if teachers:
            tb = out["teacher_best"]
            entry["fd_minus_teacher_best"] = u["fd"] - tb["fd"]
            entry["beats_teacher_best"] = u["fd"] <= tb["fd"]
            entry["recall_minus_teacher_best"] = u["recall"] - tb["recall"]
            teacher_images = tb.get("images_seen")
            if teacher_images and u["images_seen"]:
                entry["images_seen"] = u["images_seen"]
                entry["fraction_of_teacher_images"] = u["images_seen"] / teacher_images
        out["one_step"][u["label"]] = entry
    return out


def _unit(r: SetResult) -> dict[str, Any]:
    m = r.metrics
    return {"label": r.label, "kind": r.kind, "nfe": r.nfe, "images_seen": r.images_seen, "fd": m.fd,
            "recall": m.recall, "class_accuracy": m.class_accuracy}  # fmt: skip


def _group_unit(g: dict[str, Any]) -> dict[str, Any]:
    seen = {x for x in g["images_seen"] if x}
    return {
        "label": g["group"],
        "kind": g["kind"],
        "nfe": g["nfe"],
        "images_seen": seen.pop() if len(seen) == 1 else None,  # members trained on different budgets: none
        "fd": mean_of(g, "fd"),
        "fd_sd": g["fd"]["sd"],
        "recall": mean_of(g, "recall"),
        "class_accuracy": mean_of(g, "class_accuracy"),
        "seeds": len(g["members"]),
        "per_seed_fd": {m["label"]: m["fd"] for m in g["members"]},
    }


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
    metrics: dict[str, Any],
) -> None:
    teachers: dict[str, list[tuple[int, float]]] = {}
    one_step: dict[str, float] = {}
    for r in results:
        if r.kind == "teacher":
            teachers.setdefault(r.label, []).append((r.nfe or 1, r.metrics.fd))
        elif r.kind == "one-step":
            one_step[r.label] = r.metrics.fd
    real = next((r.metrics.fd for r in results if r.kind == "real"), None)
    plots.fd_vs_nfe(teachers, one_step, out / "fd_vs_nfe.png", real, metrics["metric_name"])
    panels = [g for g in grids if len(g[1])]
    if panels:  # none where the figures come from earlier reports (combine)
        plots.sample_grids(panels, out / "samples.png")
    plots.spectra(spectra, out / "spectra.png", reference="real")
    budget = metrics["budget"]
    if budget["curves"]:
        plots.fd_vs_images(
            budget["curves"],
            out / "fd_vs_images.png",
            budget["teacher"],
            budget["teacher_images"],
            budget["crossings"],
            metrics["metric_name"],
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


def seeds_text(record: dict[str, Any] | None) -> str:
    """``test 200000–209999``: the role and the first and last noise seed of a figure (– for real images)."""
    if not record:
        return "–"
    role = record.get("role") or "outside the ranges"
    return f"{role} {record['first']}–{record['last']}"


def _protocol_line(m: dict[str, Any]) -> str:
    seeds = m["seeds"]
    role = seeds.get("role")
    use = {
        "test": "the range every reported figure is measured on",
        "validation": "the range choices (snapshot, fine-tune seed, hyper-parameter) are made on; not for reporting",
    }.get(role or "", "outside the validation and test ranges: not for choices or reporting")
    text = (
        f"Noise seeds: {seeds_text(seeds)} ({seeds['count']} per set; {use}); sample i of every model uses the "
        "i-th seed, as `python -m training.generate --seeds` does."
    )
    boot = m.get("bootstrap")
    if boot:
        text += (
            f" {name_ci(boot)} of {m['metric_name']}: percentile bootstrap over both the reference and the sample "
            f"features (resampled with replacement, up to {boot['rounds']} rounds, seed {boot['seed']}), recentred "
            "on the point estimate (resampling repeats rows, which inflates FD); the rounds each interval used are "
            "in metrics.json."
        )
    return text


def name_ci(boot: dict[str, Any]) -> str:
    return f"{round(100 * boot['level'])}% CI"


def _ci(ci: dict[str, Any] | None) -> str:
    return "–" if not ci else f"[{_sig(ci['low'])}, {_sig(ci['high'])}]"


def _spread(value: dict[str, Any] | None, digits: int = 3, sig: bool = False) -> str:
    if not value:
        return "–"
    if sig:
        return f"{_sig(value['mean'])} ± {_sig(value['sd'])}"
    return f"{value['mean']:.{digits}f} ± {value['sd']:.{digits}f}"


def _run_seed(seed: int | None) -> str:
    return "" if seed is None else f" (seed {seed})"


def _groups_section(m: dict[str, Any], name: str) -> list[str]:
    lines = [
        "",
        "## Mean ± sd over fine-tune seeds",
        "",
        "Each variant's figures as mean ± sd (sample sd) over its fine-tune seeds, with every seed's own figure; "
        "never the best seed alone.",
        "",
        f"| variant | NFE | seeds | {name} | precision | recall | class accuracy | per seed ({name}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in m["groups"]:
        per_seed = ", ".join(f"{mem['label']}{_run_seed(mem['run_seed'])} {_sig(mem['fd'])}" for mem in g["members"])
        lines.append(
            f"| {g['group']} | {_fmt(g['nfe'])} | {len(g['members'])} | {_spread(g.get('fd'), sig=True)} "
            f"| {_spread(g.get('precision'))} | {_spread(g.get('recall'))} | {_spread(g.get('class_accuracy'), 4)} "
            f"| {per_seed} |"
        )
    return lines


def _budget_section(m: dict[str, Any], name: str) -> list[str]:
    budget = m["budget"]
    total = budget.get("teacher_images")
    teacher = budget.get("teacher")
    lines = ["", "## Budget: fine-tune images against the teacher", ""]
    picked = (m.get("options") or {}).get("curve_kimg")
    which = f"The snapshots nearest {', '.join(f'{k:g}' for k in picked)} kimg" if picked else "Every snapshot"
    text = f"{which}, from the {seeds_text(budget['seeds'])} seeds ({budget['seeds']['count']} per point)"
    text += f"; the teacher was pre-trained on {total} images." if total else "."
    if teacher:
        text += f" Teacher's best {name} at any NFE: {_sig(teacher['fd'])} ({teacher['label']}, NFE {teacher['nfe']}"
        source = teacher.get("from")
        text += f"; from the earlier report {source}, same seeds and features)." if source else ")."
    lines += [text, "", f"![{name} and recall against fine-tune images seen](fd_vs_images.png)", ""]
    for label, c in budget["crossings"].items():
        share = f" ({100 * c['teacher_fraction']:.2f}% of the teacher's images)" if c["teacher_fraction"] else ""
        if c["crosses"]:
            lines.append(f"- {label}: reaches the teacher's best {name} at {c['images_seen']:.0f} images{share}.")
        else:
            lines.append(
                f"- {label}: does not reach it; gap at the last point {c['gap']:+.4g} ({name} {_sig(c['fd'])} "
                f"after {c['images_seen']:.0f} images{share})."
            )
    if budget["crossings"]:
        lines.append("")
    for label, points in m["curves"].items():
        lines += [
            f"### {label}",
            "",
            f"| images seen | % of teacher's | {name} | recall | precision | KID ×10³ |",
            "|---|---|---|---|---|---|",
        ]
        for p in points:
            share = f"{100 * p['teacher_fraction']:.2f}" if p.get("teacher_fraction") else "–"
            lines.append(
                f"| {p['images_seen']} | {share} | {_sig(p['fd'])} | {_fmt(p['recall'])} | {_fmt(p['precision'])} "
                f"| {_sig(p['kid'] * 1e3)} |"
            )
        lines.append("")
    for label, points in budget["curves"].items():
        if not points or "member_images_seen" not in points[0]:
            continue
        lines += [
            f"### {label}",
            "",
            "Each point pairs every seed's snapshot nearest the same budget; the mean is over those seeds.",
            "",
            f"| images seen (each seed) | % of teacher's | {name} mean ± sd | recall mean ± sd |",
            "|---|---|---|---|",
        ]
        for p in points:
            share = f"{100 * p['teacher_fraction']:.2f}" if p.get("teacher_fraction") else "–"
            seen = " / ".join(str(x) for x in p["member_images_seen"])
            lines.append(
                f"| {seen} | {share} | {_sig(p['fd'])} ± {_sig(p['fd_sd'])} | {_fmt(p['recall'])} ± "
                f"{_fmt(p['recall_sd'])} |"
            )
        lines.append("")
    return lines


def _class_section(m: dict[str, Any]) -> list[str]:
    """Recall by the real images' class and precision by the samples' class, one row per set, and where the
    one-step sets fall short of the best teacher's recall."""
    rows = [r for r in m["results"] if r.get("recall_by_class")]
    if not rows:
        return []
    count = len(rows[0]["recall_by_class"])
    names = list(m.get("class_names") or [])
    names = names if len(names) == count else [str(c) for c in range(count)]
    head = "| set | " + " | ".join(names) + " | all |"
    rule = "|---|" + "---|" * (count + 1)
    lines = [
        "",
        "## Precision and recall by class",
        "",
        "Recall by the class of the real image (the share of each class's reference images inside the samples' "
        "k-NN manifold) and precision by the class a sample was generated for; each overall figure is the mean of "
        "its row weighted by class size. A set that covers a class less than another has lower recall there.",
    ]
    for overall, title in (("recall", "Recall:"), ("precision", "Precision:")):
        lines += ["", title, "", head, rule]
        for r in rows:
            cells = " | ".join(_fmt(v) for v in r[f"{overall}_by_class"])
            lines.append(f"| {r['label']} | {cells} | {_fmt(r[overall])} |")
    best = (m.get("summary") or {}).get("teacher_best")
    teacher = next((r for r in rows if best and r["kind"] == "teacher" and r["label"] == best["label"]
                    and r["nfe"] == best["nfe"]), None)  # fmt: skip
    if teacher is not None:
        lines.append("")
        for r in (r for r in rows if r["kind"] == "one-step"):
            gaps = [
                (a - b, names[c])
                for c, (a, b) in enumerate(zip(r["recall_by_class"], teacher["recall_by_class"], strict=True))
                if a is not None and b is not None
            ]
            gaps.sort()
            worst = ", ".join(f"{name} {gap:+.3f}" for gap, name in gaps[:3])
            lines.append(
                f"- {r['label']}: largest recall shortfalls against the teacher at NFE {teacher['nfe']}: {worst}."
            )
    return lines


def _combined_section(sources: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Combined from",
        "",
        "Every figure above was measured by the report named beside it (`python -m training.evaluate combine`); "
        "none was measured again. The reports measured the same seeds with the same features and reference.",
        "",
        "| set | report | label there | machine |",
        "|---|---|---|---|",
    ]
    for s in sources:
        env = s.get("environment") or {}
        machine = f"{env.get('gpu', env.get('cpu', '–'))}, torch {env.get('torch', '–')}" if env else "–"
        lines.append(f"| {s['label']} | `{s['report']}` | {s['label_there']} | {machine} |")
    return [*lines, ""]


def render_report(m: dict[str, Any]) -> str:
    name = m["metric_name"]
    split = m.get("reference_split", "test")  # None: a folder, which has no splits
    count = m["seeds"]["count"]
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
    ci_name = name_ci(m["bootstrap"]) if m.get("bootstrap") else "CI"
    inception = m.get("inception")
    lines = [
        "# Evaluation report",
        "",
        f"Data: `{m['data']}` at {m['resolution']}×{m['resolution']}; reference: {m['reference_images']} "
        f"{split_name}images. {count} samples per set (classes balanced, the same noise for every model). " + features,
        "",
        _protocol_line(m),
        "",
        f"| set | sampler | NFE | training images | seeds | {name} | {name} {ci_name} | KID ×10³ | precision | recall "
        "| class accuracy " + ("| FID " if inception else "") + "| images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if inception else "") + "---|",
    ]
    sampler = {"real": "real images", "teacher": "Heun", "one-step": "one step"}
    for r in m["results"]:
        seen = f"{r['images_seen'] / 1e6:.3f}M" if r.get("images_seen") else "–"
        row = (
            f"| {r['label']} | {sampler[r['kind']]} | {_fmt(r['nfe'])} | {seen} | {seeds_text(r.get('seeds'))} "
            f"| {_sig(r['fd'])} | {_ci(r.get('fd_ci'))} | {_sig(r['kid'] * 1e3)} | {_fmt(r['precision'])} "
            f"| {_fmt(r['recall'])} | {_fmt(r['class_accuracy'], 4)} "
        )
        if inception:
            row += f"| {_sig(r.get('fid'))} "
        row += f"| {_fmt(r['images_per_s'], 1) if r['kind'] != 'real' else '–'} |"
        lines.append(row)
    lines += [
        "",
        "Training images: pre-training images for teachers, fine-tune images for one-step generators. "
        "KID is unbiased (can be slightly negative). Class accuracy: share of samples the classifier assigns "
        "to the class they were generated for (for real images: its accuracy on them).",
    ]
    if m.get("groups"):
        lines += _groups_section(m, name)
    lines += _class_section(m)
    s = m["summary"]
    lines += ["", "## Summary", ""]
    if "real_fd_floor" in s:
        if split:
            what = f"{count} {'test' if split == 'train' else 'train'} images against the {split} set"
        else:  # a folder: the floor's images are among the reference's, so it reads lower than a held-out set's
            what = f"{count} images drawn from the reference folder itself, a lower bound"
        lines.append(f"- Real-vs-real floor ({what}): {name} {_sig(s['real_fd_floor'])}.")
    if "teacher_best" in s:
        tb = s["teacher_best"]
        lines.append(
            f"- Best teacher: {tb['label']} at NFE {tb['nfe']}, {name} {_sig(tb['fd'])}, recall {_fmt(tb['recall'])}."
        )
    for label, e in s.get("one_step", {}).items():
        text = f"- One-step {label}: {name} {_sig(e['fd'])}"
        if "fine_tune_seeds" in e:
            text += f" ± {_sig(e['fd_sd'])} (mean ± sd over {e['fine_tune_seeds']} fine-tune seeds)"
        if "fd_minus_teacher_best" in e:
            verdict = "matches or beats" if e["beats_teacher_best"] else "is worse than"
            text += f" ({e['fd_minus_teacher_best']:+.4g}; {verdict} the teacher's best)"
            text += f", recall {_fmt(e['recall'])} ({e['recall_minus_teacher_best']:+.3f} against the teacher's)"
        if "fraction_of_teacher_images" in e:
            text += (
                f", after {e['images_seen'] / 1e6:.3f}M fine-tune images "
                f"({100 * e['fraction_of_teacher_images']:.1f}% of the teacher's pre-training images)"
            )
        lines.append(text + ".")
    lines += ["", "## Plots", "", f"![{name} against NFE](fd_vs_nfe.png)", ""]
    if not m.get("combined_from"):  # a combined report has no images to show
        lines += ["![samples](samples.png)", ""]
    lines += ["![radially averaged power spectra](spectra.png)", ""]
    if m.get("combined_from"):
        lines += _combined_section(m["combined_from"])
    if m["curves"]:
        lines += _budget_section(m, name)
    env = m["environment"]
    threads = f"{env['torch_threads']} thread" + ("s" if env["torch_threads"] != 1 else "")
    lines += [
        "## Environment",
        "",
        f"torch {env['torch']} on {env.get('gpu', env['cpu'])} ({env['device']}, {threads}); "
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
) -> None:
    """The plots, ``metrics.json`` and ``report.md`` into ``out``."""
    write_plots(out, results, grids, spectra, metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_report(metrics))
