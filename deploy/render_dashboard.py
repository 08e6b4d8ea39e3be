"""Render the Grafana dashboard's panels to one PNG from a real Prometheus, without Grafana.

Each panel's PromQL queries (deploy/grafana/dashboards/onestep.json) run as range queries against Prometheus
(`$model` matches every model, `$__rate_interval` is --rate-interval) and are drawn with matplotlib in the
dashboard's layout order. Used for docs/dashboard.png where no Grafana can be installed:

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "onestep.json"
UNITS = {"s": ("ms", 1e3), "percentunit": ("%", 100.0), "reqps": ("req/s", 1.0), "short": ("", 1.0)}


@dataclass
class Target:
    expr: str
    legend: str
    heatmap: bool


@dataclass
class Panel:
    title: str
    kind: str
    unit: str
    targets: list[Target]


def load_panels(path: Path) -> list[Panel]:
    dash = json.loads(path.read_text())
    flat = []
    for p in dash["panels"]:
        flat.extend(p.get("panels", []) if p.get("type") == "row" else [p])
    flat.sort(key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    return [
        Panel(
            p["title"],
            p["type"],
            p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"),
            [Target(t["expr"], t.get("legendFormat", ""), t.get("format") == "heatmap") for t in p["targets"]],
        )
        for p in flat
    ]


def substitute(expr: str, rate_interval: str, model: str = ".*") -> str:
    return expr.replace("$__rate_interval", rate_interval).replace("$model", model)


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or json.dumps(labels)


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def _bucket_bound(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


def render(url: str, dashboard: Path, out: Path, minutes: float, step: float, rate_interval: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = load_panels(dashboard)
    end = time.time()
    start = end - minutes * 60
    cols = 2
    rows = math.ceil(len(panels) / cols)
    # Stat panels get a short row, as in Grafana.
    heights = [0.5 if all(p.kind == "stat" for p in panels[r * cols:(r + 1) * cols]) else 1.0 for r in range(rows)]
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.2 * sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    fig.suptitle(f"{json.loads(dashboard.read_text())['title']} (last {minutes:g} min, "
                 f"Prometheus range queries, rate window {rate_interval})", fontsize=13)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit_label, scale = UNITS.get(panel.unit, (panel.unit, 1.0))
        ax.set_title(panel.title, fontsize=11, loc="left")
        for target in panel.targets:
            series = query_range(url, substitute(target.expr, rate_interval), start, end, step)
            if target.heatmap:
                _heatmap(ax, series, start, end, step, np)
                continue
            for s in sorted(series, key=lambda s: legend(target.legend, s["metric"])):
                t = np.array([float(v[0]) for v in s["values"]])
                y = np.array([float(v[1]) for v in s["values"]]) * scale
                if panel.kind == "stat":
                    ax.barh(legend(target.legend, s["metric"]), y[-1] if len(y) else 0.0)
                else:
                    ax.plot((t - end) / 60, y, label=legend(target.legend, s["metric"]), lw=1.4)
        if panel.kind == "timeseries":
            ax.set_xlabel("minutes before render")
            ax.set_xlim(-minutes, 0)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="upper left", ncol=3)
        ax.set_ylabel(unit_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _heatmap(ax, series: list[dict], start: float, end: float, step: float, np) -> None:
    """Grafana-style histogram heatmap: cumulative `le` buckets turned into per-bucket counts over time."""
    series = sorted(series, key=lambda s: _bucket_bound(s["metric"].get("le", "+Inf")))
    if not series:
        return
    times = np.arange(start, end + step / 2, step)
    grid = np.zeros((len(series), len(times)))
    for i, s in enumerate(series):
        for ts, v in s["values"]:
            j = int(round((float(ts) - start) / step))
            if 0 <= j < len(times) and v != "NaN":
                grid[i, j] = float(v)
    grid = np.diff(np.vstack([np.zeros((1, len(times))), grid]), axis=0).clip(min=0)
    ax.imshow(grid, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest",
              extent=((start - end) / 60, 0, -0.5, len(series) - 0.5))
    ax.set_yticks(range(len(series)), [s["metric"].get("le", "") for s in series], fontsize=7)
    ax.set_xlabel("minutes before render")
    ax.set_ylabel("batch size <= le")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ap.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    ap.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    ap.add_argument("--minutes", type=float, default=10.0, help="time range to draw")
    ap.add_argument("--step", type=float, default=5.0, help="seconds between points")
    ap.add_argument("--rate-interval", default="30s", help="what $__rate_interval stands for")
    args = ap.parse_args(argv)
    render(args.prometheus, args.dashboard, args.out, args.minutes, args.step, args.rate_interval)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
