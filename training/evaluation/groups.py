"""Fine-tune seeds of one variant (``--model NAME=DIR,DIR,DIR``): each metric as mean ± sd over the seeds, with
the per-seed figures, never the best seed alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.evaluation.evaluator import SetResult
from training.evaluation.protocol import mean_sd

GROUP_METRICS = ("fd", "kid", "precision", "recall", "class_accuracy")


def group_table(results: Sequence[SetResult]) -> list[dict[str, Any]]:
    """One entry per (group, NFE) in the order first met: its members' figures and each metric's mean ± sd
    (sample sd, ddof 1) over them; a metric a member lacks (class accuracy without labels) is left out."""
    members: dict[tuple[str, int | None], list[SetResult]] = {}
    for r in results:
        if r.group is not None:
            members.setdefault((r.group, r.nfe), []).append(r)
    table = []
    for (name, nfe), rows in members.items():
        entry: dict[str, Any] = {
            "group": name,
            "kind": rows[0].kind,
            "nfe": nfe,
            "images_seen": [r.images_seen for r in rows],
            "seeds": rows[0].seeds,
            "members": [
                {
                    "label": r.label,
                    "run_seed": r.run_seed,
                    "source": r.source,
                    **{k: getattr(r.metrics, k) for k in GROUP_METRICS},
                    "fd_ci": r.fd_ci,
                }
                for r in rows
            ],  # fmt: skip
        }
        for key in GROUP_METRICS:
            values = [getattr(r.metrics, key) for r in rows]
            if all(v is not None for v in values):
                entry[key] = mean_sd(values).to_json()
        table.append(entry)
    return table


def mean_of(entry: dict[str, Any], key: str) -> float | None:
    """The mean of a group entry's metric (None where the metric is left out)."""
    value = entry.get(key)
    return value["mean"] if isinstance(value, dict) else None
