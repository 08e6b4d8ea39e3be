"""Whether two evaluation reports (``metrics.json``) measured the same thing, so that a figure of one may stand
beside, or be averaged with, a figure of the other."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: What two reports must share: the same metric and feature extractor (by its weights' fingerprint, checked
#: beside these keys), data, resolution and reference, and the same noise seeds (role, range and count).
COMPARABLE = ("metric_name", "data", "resolution", "reference_split", "reference_images", "seeds")


def read_metrics(path: str | Path, flag: str) -> dict[str, Any]:
    """A report's ``metrics.json`` (``path`` is the file or the report's dir); ``flag`` names the argument that gave
    it, for the error."""
    file = Path(path)
    if file.is_dir():
        file = file / "metrics.json"
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag} {path}: not a readable metrics.json ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError(f"{flag} {path}: not an evaluation report's metrics.json (no results)")
    return report


def differences(there: Mapping[str, Any], here: Mapping[str, Any], keys: Sequence[str] = COMPARABLE) -> str | None:
    """None where both reports measured the same thing, else what differs, e.g. ``seeds, features differ: seeds:
    {...} there, {...} here``."""
    differ = [k for k in keys if there.get(k) != here.get(k)]
    named = list(differ)
    if (there.get("features") or {}).get("fingerprint") != (here.get("features") or {}).get("fingerprint"):
        differ.append("features")
    if not differ:
        return None
    detail = "; ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in named)
    return f"{', '.join(differ)} differ" + (f": {detail}" if detail else "")
