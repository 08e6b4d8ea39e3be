"""Fine-tune seeds measured in separate evaluation runs, brought together into one report.

A fine-tune seed costs hours on a CPU, so the seeds of one variant are often measured by different ``report``
runs (other sessions, other machines). ``combine`` reads their ``metrics.json``, takes one one-step figure from
each and reports the variant as mean ± sd over the seeds with every seed's figure, exactly as a single ``report``
with ``--model NAME=DIR,DIR,DIR`` would: no figure is measured again, so the reports must have measured the same
thing (:mod:`training.evaluation.comparable`), and a seed counted twice is refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.comparable import COMPARABLE, differences, read_metrics
from training.evaluation.evaluator import SetResult
from training.evaluation.groups import group_table
from training.evaluation.metrics import SetMetrics
from training.evaluation.options import Log
from training.evaluation.report import environment, summarize, write_report

#: Kept from the first report: what every combined report shares (checked) or describes alike.
HEADER = ("metric_name", "data", "resolution", "classifier", "features", "reference_split", "inception",
          "reference_images", "class_names", "seeds", "bootstrap")  # fmt: skip
_METRIC_FIELDS = {f.name for f in fields(SetMetrics)}
_RESULT_FIELDS = {f.name for f in fields(SetResult)} - {"metrics"}
#: Beside the feature fingerprint: what the combined reports must share (the bootstrap too, so that every
#: member's interval means the same).
_CHECKED = (*COMPARABLE, "bootstrap")


@dataclass(frozen=True)
class MemberSpec:
    """One seed of a group: a report and the label of its one-step figure (None: the report's only one)."""

    report: str
    label: str | None = None


def parse_group(spec: str) -> tuple[str, list[MemberSpec]]:
    """``NAME=REPORT[#LABEL],REPORT[#LABEL],...`` (at least two members; a REPORT is a metrics.json or its dir)."""
    name, sep, rest = spec.partition("=")
    members = [m for m in rest.split(",") if m]
    if not sep or not name or "/" in name or len(members) < 2:
        raise ValueError(f"--group {spec}: a group is NAME=REPORT[#LABEL],REPORT[#LABEL][,...] (at least two)")
    out = []
    for m in members:
        report, _, label = m.partition("#")
        out.append(MemberSpec(report, label or None))
    return name, out


def result_from_row(row: Mapping[str, Any]) -> SetResult:
    """The ``SetResult`` a report's ``results`` row was written from (``SetResult.row``)."""
    metrics = SetMetrics(**{k: row[k] for k in _METRIC_FIELDS if k in row})
    return SetResult(metrics=metrics, **{k: row[k] for k in _RESULT_FIELDS if k in row})


def _one_step_row(report: Mapping[str, Any], member: MemberSpec) -> dict[str, Any]:
    rows = [r for r in report["results"] if r.get("kind") == "one-step"]
    labels = ", ".join(r["label"] for r in rows) or "none"
    if member.label is None:
        if len(rows) != 1:
            raise ValueError(
                f"--group: {member.report} holds {len(rows)} one-step figures ({labels}); name one as REPORT#LABEL"
            )
        return dict(rows[0])
    found = [r for r in rows if r["label"] == member.label]
    if not found:
        raise ValueError(f"--group: {member.report} holds no one-step figure {member.label!r} (it holds: {labels})")
    return dict(found[0])


def _check_same(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    first_path, first = reports[0]
    for path, other in reports[1:]:
        differ = differences(other, first, keys=_CHECKED)
        if differ:
            raise ValueError(f"{path} measured something else than {first_path} ({differ}); no mean over them")


def _member_label(group: str, label: str) -> str:
    return label if label.startswith(f"{group}/") else f"{group}/{label}"


def combine_reports(
    groups: Sequence[tuple[str, Sequence[MemberSpec]]],
    out: str | Path,
    teacher_metrics: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.json`` and the FD-against-NFE and spectra plots of ``groups`` into ``out``;
    with ``teacher_metrics``, that report's teacher figures come along, and each group's mean is compared with
    the teacher's best as ``report`` compares it."""
    t_start = time.time()
    cache: dict[str, dict[str, Any]] = {}

    def load(path: str, flag: str) -> dict[str, Any]:
        if path not in cache:
            cache[path] = read_metrics(path, flag)
        return cache[path]

    rows: list[dict[str, Any]] = []
    spectra: dict[str, list[float]] = {}
    sources: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    names = [name for name, _ in groups]
    if len(set(names)) < len(names):
        raise ValueError(f"--group: two groups share a name ({', '.join(names)})")
    for name, members in groups:
        for member in members:
            report = load(member.report, "--group")
            row = _one_step_row(report, member)
            if row.get("run_seed") is not None:
                key = (name, row["run_seed"])
                if key in seen:
                    raise ValueError(f"--group {name}: fine-tune seed {row['run_seed']} is in it twice")
                seen.add(key)
            spectrum = (report.get("spectra") or {}).get(f"{row['label']} (1 step)")
            original = row["label"]
            row.update(label=_member_label(name, original), group=name)
            if any(r["label"] == row["label"] for r in rows):
                raise ValueError(f"--group {name}: {row['label']} is in it twice")
            rows.append(row)
            if spectrum is not None:
                spectra[f"{row['label']} (1 step)"] = spectrum
            sources.append({"group": name, "label": row["label"], "report": member.report, "label_there": original,
                            "environment": report.get("environment")})  # fmt: skip
    first = load(groups[0][1][0].report, "--group")
    reports = [(path, load(path, "--group")) for path in dict.fromkeys(s["report"] for s in sources)]
    if teacher_metrics:
        teacher = load(teacher_metrics, "--teacher-metrics")
        teacher_rows = [dict(r) for r in teacher["results"] if r.get("kind") == "teacher"]
        if not teacher_rows:
            raise ValueError(f"--teacher-metrics {teacher_metrics}: the report evaluated no teacher")
        reports.append((teacher_metrics, teacher))
        rows = teacher_rows + rows
        for key, s in (teacher.get("spectra") or {}).items():
            if any(key == f"{r['label']} (NFE {r['nfe']})" for r in teacher_rows):
                spectra[key] = s
    _check_same(reports)
    real = [dict(r) for r in first["results"] if r.get("kind") == "real"]
    if "real" in (first.get("spectra") or {}):
        spectra = {"real": first["spectra"]["real"], **spectra}
    results = [result_from_row(r) for r in real + rows]
    group_rows = group_table(results)
    summary = summarize(results, group_rows)
    metrics: dict[str, Any] = {k: first.get(k) for k in HEADER}
    teacher_best = summary.get("teacher_best") or {}
    metrics.update(
        options=None,
        combined_from=sources,
        results=[r.row() for r in results],
        groups=group_rows,
        curves={},
        budget={
            "seeds": None,
            "teacher_images": teacher_best.get("images_seen"),
            "teacher": None,
            "curves": {},
            "crossings": {},
        },
        spectra=spectra,
        summary=summary,
        environment=environment("cpu"),
        wall_seconds=round(time.time() - t_start, 1),
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, metrics, results, [], {k: np.asarray(v) for k, v in spectra.items()})
    log(f"Wrote {out / 'report.md'}, {out / 'metrics.json'} and plots from {len(reports)} reports")
    return metrics
