"""Evaluate one-step generators and their teachers against real data: ``python -m training.evaluate``.

Two commands:

- ``train-classifier``: train the evaluation classifier whose penultimate layer is the feature space of
  FD / KID / precision-recall (saved as ``config.json`` + ``classifier.safetensors``);
- ``report`` (the default): sample every ``--model`` (a generator in one step; a denoiser with Heun at each
  ``--nfe``) from the same seeded noise and balanced classes, compare with the real test set, and write
  ``report.md``, ``metrics.json`` and PNG plots into ``--out``. A fine-tune run dir also gives FD against
  fine-tune images seen, read from its ``network-snapshot-*`` model dirs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import plots
from training.checkpoint import CheckpointError, load_model, read_config
from training.classifier import (
    Classifier,
    TrainOptions,
    load_classifier,
    read_classifier_config,
    save_classifier,
    train_classifier,
)
from training.metrics import SetMetrics, compare
from training.rundir import export_state_snapshot
from training.sampling import heun_steps_for_nfe, sample, seeded_noise
from training.spectra import SpectrumAccumulator

SNAPSHOT_PREFIX = "network-snapshot-"
DEFAULT_NFE = (1, 3, 7, 15, 35)
DEFAULT_CLASSIFIER = "models/fmnist-classifier"
REPO_ROOT = Path(__file__).resolve().parents[1]


def find_classifier(path: str | Path) -> Path:
    """A relative classifier path is tried from the working dir, then from the repository root."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


Log = Callable[[str], None]


# ---------------------------------------------------------------- what to evaluate


@dataclass
class Source:
    """One ``--model`` argument resolved: a model dir, or a run dir (its latest snapshot, plus all snapshots)."""

    label: str
    model_dir: Path
    kind: str  # 'generator' | 'denoiser'
    config: dict[str, Any]
    run_dir: Path | None = None
    snapshots: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def images_seen(self) -> int | None:
        value = (self.config.get("training") or {}).get("images_seen")
        return int(value) if isinstance(value, (int, float)) else None


def snapshot_images_seen(model_dir: Path) -> int:
    """Images seen by a snapshot: ``training.images_seen`` of its config, else the kimg in its name."""
    try:
        value = (read_config(model_dir).get("training") or {}).get("images_seen")
    except CheckpointError:
        value = None
    if isinstance(value, (int, float)):
        return int(value)
    suffix = model_dir.name[len(SNAPSHOT_PREFIX) :]
    if not suffix.isdigit():
        raise CheckpointError(f"{model_dir}: no training.images_seen in config.json and no kimg in the name")
    return int(suffix) * 1000


def snapshot_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The model dirs ``network-snapshot-*`` of a run dir (those holding a config.json), by images seen."""
    run_dir = Path(run_dir)
    found = [
        (snapshot_images_seen(d), d)
        for d in run_dir.glob(SNAPSHOT_PREFIX + "*")
        if d.is_dir() and (d / "config.json").is_file()
    ]
    return sorted(found)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any(d.is_dir() for d in path.glob(SNAPSHOT_PREFIX + "*"))


def resolve_source(spec: str) -> Source:
    """``PATH`` or ``LABEL=PATH``; PATH is a model dir or a run dir with snapshot model dirs."""
    label, path_text = None, spec
    if "=" in spec and not Path(spec).exists():
        label, path_text = spec.split("=", 1)
    path = Path(path_text)
    if not path.exists():
        raise CheckpointError(f"--model {spec}: {path} does not exist")
    run_dir, snapshots = None, []
    if not is_run_dir(path) and path.is_dir():
        export_state_snapshot(path)  # a pre-training run dir that holds only its resumable state
    if is_run_dir(path):
        run_dir, snapshots = path, snapshot_dirs(path)
        if not snapshots:
            raise CheckpointError(f"--model {spec}: run dir {path} has no snapshot model dir with a config.json")
        model_dir = snapshots[-1][1]
    else:
        model_dir = path
    config = read_config(model_dir)
    return Source(
        label=label or path.name,
        model_dir=model_dir,
        kind=config["kind"],
        config=config,
        run_dir=run_dir,
        snapshots=snapshots,
    )


# ---------------------------------------------------------------- options and results


@dataclass
class EvalOptions:
    num_samples: int = 10000
    batch: int = 250
    seed: int = 0
    nfe: tuple[int, ...] = DEFAULT_NFE
    num_real: int | None = None  # reference images from the test split (None: all)
    grid: int = 100  # images kept per set for the sample grids
    curve: bool = True  # FD against images seen for fine-tune run dirs
    curve_samples: int | None = None  # samples per snapshot (None: num_samples)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.num_samples < 4:
            raise ValueError("--num-samples must be at least 4")
        if self.batch < 1:
            raise ValueError("--batch must be at least 1")
        for n in self.nfe:
            heun_steps_for_nfe(n)  # raises on even or non-positive NFE


@dataclass
class SetResult:
    label: str
    kind: str  # 'real' | 'teacher' | 'one-step'
    nfe: int | None
    images_seen: int | None
    metrics: SetMetrics
    seconds: float
    source: str = ""
    fid: float | None = None

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "metrics"}
        out.update(asdict(self.metrics))
        out["images_per_s"] = round(self.metrics.count / self.seconds, 2) if self.seconds > 0 else None
        return out


FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class Evaluator:
    """Holds the reference features and measures sample sets against them."""

    def __init__(
        self,
        classifier: Classifier,
        reference: torch.Tensor,
        options: EvalOptions,
        reference_grid: torch.Tensor | None = None,
        inception: FeatureFn | None = None,
        log: Log = print,
    ):
        self.classifier = classifier
        self.options = options
        self.inception = inception
        self.log = log
        self.real_spectrum = SpectrumAccumulator()
        self.real_features, _, self.real_inception = self._features(iter(self._chunks(reference)), self.real_spectrum)
        self.real_grid = reference[: options.grid] if reference_grid is None else reference_grid[: options.grid]

    def _chunks(self, images: torch.Tensor):
        for start in range(0, len(images), self.options.batch):
            yield images[start : start + self.options.batch]

    @torch.no_grad()
    def _features(self, batches, spectrum: SpectrumAccumulator):
        feats, logits, inc = [], [], []
        device = self.options.device
        for images in batches:
            spectrum.update(images)
            x = images.to(device)
            f = self.classifier.features(x)
            feats.append(f.double().cpu())
            logits.append(self.classifier.head(f).double().cpu())
            if self.inception is not None:
                inc.append(self.inception(x)[0].double().cpu())
        return torch.cat(feats), torch.cat(logits), (torch.cat(inc) if inc else None)

    def measure(
        self,
        label: str,
        kind: str,
        generate: Callable[[int, int], torch.Tensor],
        labels: torch.Tensor | None,
        count: int,
        nfe: int | None = None,
        images_seen: int | None = None,
        source: str = "",
    ) -> tuple[SetResult, torch.Tensor, np.ndarray]:
        """Generate ``count`` images in batches with ``generate(start, stop)``; returns (result, grid, spectrum)."""
        spectrum = SpectrumAccumulator()
        grid: list[torch.Tensor] = []
        seconds = 0.0
        kept = 0

        def batches():
            nonlocal seconds, kept
            for start in range(0, count, self.options.batch):
                stop = min(start + self.options.batch, count)
                t0 = time.perf_counter()
                images = generate(start, stop).detach().float().cpu().clamp(-1, 1)
                seconds += time.perf_counter() - t0
                if kept < self.options.grid:
                    grid.append(images[: self.options.grid - kept])
                    kept += len(grid[-1])
                yield images

        feats, logits, inc = self._features(batches(), spectrum)
        conditional = labels is not None and logits.shape[1] == self.classifier.config.num_classes
        metrics = compare(
            self.real_features,
            feats,
            logits if conditional else None,
            labels[:count] if conditional else None,
            kid_subsets=self.options.kid_subsets,
            kid_subset_size=self.options.kid_subset_size,
        )
        fid = None
        if inc is not None and self.real_inception is not None:
            from training.metrics import FeatureStats, frechet_distance_stats

            fid = frechet_distance_stats(FeatureStats.of(self.real_inception), FeatureStats.of(inc))
        result = SetResult(label, kind, nfe, images_seen, metrics, seconds, source, fid)
        nfe_text = f" NFE {nfe}" if nfe is not None else ""
        self.log(
            f"{label}{nfe_text}: FD {metrics.fd:.3f}, KID {metrics.kid * 1e3:.3f}e-3, precision {metrics.precision:.3f}"
            f", recall {metrics.recall:.3f}"
            + (f", class accuracy {metrics.class_accuracy:.4f}" if metrics.class_accuracy is not None else "")
            + (f", FID {fid:.3f}" if fid is not None else "")
            + f" ({count} images, {seconds:.1f} s generating)"
        )
        return result, torch.cat(grid) if grid else torch.empty(0), spectrum.mean()


def generator_fn(
    model: torch.nn.Module, kind: str, nfe: int, seeds: Sequence[int], labels: torch.Tensor | None, device: str
) -> Callable[[int, int], torch.Tensor]:
    """Images [start, stop) of a set: noise row i from seeds[i], class labels[i]; one step or Heun at ``nfe``."""
    shape = model.img_shape if kind == "generator" else (model.img_channels,) + (model.img_resolution,) * 2

    @torch.no_grad()
    def generate(start: int, stop: int) -> torch.Tensor:
        z = seeded_noise(seeds[start:stop], shape, device=device)
        y = labels[start:stop].to(device) if labels is not None else None
        if kind == "generator":
            return model(z, y)
        return sample(model, z, y, nfe=nfe)

    return generate


def balanced_labels(count: int, label_dim: int) -> torch.Tensor | None:
    """Class i % label_dim for sample i, so every class is equally represented and grid columns are classes."""
    return torch.arange(count) % label_dim if label_dim > 0 else None


# ---------------------------------------------------------------- the whole evaluation


def load_reference(
    data: str, data_path: str | None, resolution: int, channels: int, options: EvalOptions, log: Log
) -> torch.Tensor:
    from training.datasets import open_dataset

    test = open_dataset(data, split="test", resolution=resolution, path=data_path, channels=channels)
    n = len(test) if options.num_real is None else min(options.num_real, len(test))
    images, labels = test.get_batch(list(range(n)))
    log(f"Reference: {n} test images of {data} at {resolution}x{resolution}")
    return images, labels


def class_ordered(labels: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """Indices whose labels run 0, 1, .., num_classes-1, 0, 1, .. (as the balanced samples do), where possible."""
    if num_classes <= 0:
        return torch.arange(min(count, len(labels)))
    pools = [torch.nonzero(labels == c).flatten().tolist() for c in range(num_classes)]
    picked: list[int] = []
    for i in range(count):
        pool = pools[i % num_classes]
        if pool:
            picked.append(pool.pop(0))
    return torch.tensor(picked, dtype=torch.long)


def real_train_set(
    data: str, data_path: str | None, resolution: int, channels: int, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of the train split: the real-vs-real floor of each metric at this sample count."""
    from training.datasets import open_dataset

    train = open_dataset(data, split="train", resolution=resolution, path=data_path, channels=channels)
    count = min(count, len(train))
    idx = np.random.default_rng(seed).choice(len(train), count, replace=False)
    images, labels = train.get_batch(sorted(idx.tolist()))
    return images, labels


def run_evaluation(
    sources: Sequence[Source],
    out_dir: str | Path,
    classifier_dir: str | Path,
    data: str | None = None,
    data_path: str | None = None,
    options: EvalOptions | None = None,
    inception_path: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate every source, write ``metrics.json``, ``report.md`` and the plots; returns the metrics dict."""
    options = options or EvalOptions()
    if not sources:
        raise ValueError("nothing to evaluate: pass at least one --model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    inception = None
    if inception_path is not None:
        from training.inception import load_inception_features

        inception = load_inception_features(inception_path, device=options.device)
    resolutions = {s.config["img_resolution"] for s in sources}
    if len(resolutions) != 1:
        raise ValueError(f"all models must share one resolution, got {sorted(resolutions)}")
    resolution = resolutions.pop()
    channels = sources[0].config["img_channels"]
    data = data or (sources[0].config.get("dataset") or {}).get("spec")
    if not data:
        raise ValueError("no --data given and the first model's config.json names no dataset.spec")
    classifier_dir = find_classifier(classifier_dir)
    classifier = load_classifier(classifier_dir, device=options.device)
    clf_config = read_classifier_config(classifier_dir)
    metric_name = clf_config.get("metric_name", "FD")

    reference, reference_labels = load_reference(data, data_path, resolution, channels, options, log)
    label_dim = sources[0].config.get("label_dim", 0)
    grid_idx = class_ordered(reference_labels, options.grid, label_dim)
    evaluator = Evaluator(classifier, reference, options, reference[grid_idx], inception, log)
    n = options.num_samples
    seeds = [options.seed + i for i in range(n)]

    results: list[SetResult] = []
    grids: list[tuple[str, torch.Tensor]] = [("real (test)", evaluator.real_grid)]
    spectra: dict[str, np.ndarray] = {"real": evaluator.real_spectrum.mean()}

    train_images, train_labels = real_train_set(data, data_path, resolution, channels, n, options.seed)
    res, _, _ = evaluator.measure(
        "real (train split)", "real", lambda a, b: train_images[a:b], train_labels, len(train_images)
    )
    res.seconds = 0.0
    results.append(res)

    curves: dict[str, list[dict[str, Any]]] = {}
    for src in sources:
        model = load_model(src.model_dir, device=options.device)
        label_dim = model.label_dim
        labels = balanced_labels(n, label_dim)
        if src.kind == "denoiser":
            for nfe in options.nfe:
                fn = generator_fn(model, "denoiser", nfe, seeds, labels, options.device)
                res, grid, spec = evaluator.measure(
                    src.label, "teacher", fn, labels, n, nfe, src.images_seen, str(src.model_dir)
                )
                results.append(res)
                grids.append((f"{src.label}, Heun NFE {nfe}", grid))
                if nfe == max(options.nfe):
                    spectra[f"{src.label} (NFE {nfe})"] = spec
        else:
            fn = generator_fn(model, "generator", 1, seeds, labels, options.device)
            res, grid, spec = evaluator.measure(
                src.label, "one-step", fn, labels, n, 1, src.images_seen, str(src.model_dir)
            )
            results.append(res)
            grids.append((f"{src.label}, 1 step", grid))
            spectra[f"{src.label} (1 step)"] = spec
            if options.curve and len(src.snapshots) > 1:
                curves[src.label] = snapshot_curve(src, evaluator, options, final=res, log=log)

    summary = summarize(results)
    metrics: dict[str, Any] = {
        "metric_name": metric_name,
        "data": data,
        "resolution": resolution,
        "classifier": {
            "dir": str(classifier_dir),
            "test_accuracy": clf_config.get("test_accuracy"),
            "feature_dim": clf_config["architecture"].get("feature_dim"),
        },
        "inception": inception_path,
        "options": asdict(options),
        "reference_images": len(reference),
        "results": [r.row() for r in results],
        "curves": curves,
        "spectra": {k: v.tolist() for k, v in spectra.items()},
        "summary": summary,
        "environment": environment(options.device),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    write_plots(out, results, grids, spectra, curves, metric_name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_report(metrics))
    log(f"Wrote {out / 'report.md'}, {out / 'metrics.json'} and plots ({metrics['wall_seconds']:.0f} s)")
    return metrics


def snapshot_curve(
    src: Source, evaluator: Evaluator, options: EvalOptions, final: SetResult, log: Log
) -> list[dict[str, Any]]:
    """FD (and the other metrics) of every snapshot of a fine-tune run dir, against fine-tune images seen."""
    count = options.curve_samples or options.num_samples
    seeds = [options.seed + i for i in range(count)]
    points = []
    for images_seen, model_dir in src.snapshots:
        if model_dir == src.model_dir and count == options.num_samples:
            res = final  # already measured with the same noise
        else:
            model = load_model(model_dir, device=options.device)
            labels = balanced_labels(count, model.label_dim)
            fn = generator_fn(model, "generator", 1, seeds, labels, options.device)
            res, _, _ = evaluator.measure(
                f"{src.label} @ {images_seen / 1000:g} kimg", "one-step", fn, labels, count, 1, images_seen
            )
        points.append({"images_seen": images_seen, "snapshot": model_dir.name, **asdict(res.metrics)})
    return points


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


# ---------------------------------------------------------------- outputs


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
    lines = [
        "# Evaluation report",
        "",
        f"Data: `{m['data']}` at {m['resolution']}×{m['resolution']}; reference: {m['reference_images']} test images. "
        f"{opts['num_samples']} samples per set (seeds {opts['seed']}..{opts['seed'] + opts['num_samples'] - 1}, "
        "classes balanced, the same noise for every model). "
        f"Features: the evaluation classifier `{m['classifier']['dir']}` "
        f"(test accuracy {_fmt(m['classifier']['test_accuracy'], 4)}, {m['classifier']['feature_dim']}-d).",
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
        lines.append(
            f"- Real-vs-real floor ({opts['num_samples']} train images against the test set): "
            f"{name} {_sig(s['real_fd_floor'])}."
        )
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


# ---------------------------------------------------------------- command line


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate one-step generators and teachers (report, the default command) or train the "
        "evaluation classifier (train-classifier).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    r = sub.add_parser("report", help="evaluate models into report.md, metrics.json and plots", formatter_class=fmt)
    r.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[LABEL=]PATH",
        help="model dir or run dir (repeatable); generators are sampled in one step, denoisers with Heun at --nfe; "
        "a fine-tune run dir also gives the FD-versus-images curve of its snapshots",
    )
    r.add_argument("--out", required=True, help="output dir")
    r.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="evaluation classifier dir")
    r.add_argument("--data", default=None, help="reference data set spec (default: the first model's dataset.spec)")
    r.add_argument("--data-path", default=None, help="data location, when the spec does not give it")
    r.add_argument("--num-samples", type=int, default=10000, help="samples per set")
    r.add_argument("--num-real", type=int, default=None, help="reference test images (default: all)")
    r.add_argument("--batch", type=int, default=250, help="images per forward pass")
    r.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED+i")
    r.add_argument("--nfe", type=_int_list, default=DEFAULT_NFE, help="Heun NFEs for denoisers (odd)")
    r.add_argument("--no-curve", action="store_true", help="skip the snapshots of fine-tune run dirs")
    r.add_argument("--curve-samples", type=int, default=None, help="samples per snapshot (default: --num-samples)")
    r.add_argument("--kid-subsets", type=int, default=100)
    r.add_argument("--kid-subset-size", type=int, default=1000)
    r.add_argument(
        "--inception",
        default=None,
        metavar="FILE",
        help="local Inception-v3 FID weights (.pth state dict or .safetensors): adds Inception FID; never downloads",
    )
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    t = sub.add_parser("train-classifier", help="train the evaluation classifier", formatter_class=fmt)
    t.add_argument("--data", default="fmnist", help="data set spec")
    t.add_argument("--data-path", default=None)
    t.add_argument("--out", default=DEFAULT_CLASSIFIER, help="output dir")
    t.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    t.add_argument("--batch", type=int, default=TrainOptions.batch_size)
    t.add_argument("--lr", type=float, default=TrainOptions.lr)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-flip", action="store_true", help="no horizontal flips (use for digits or text)")
    t.add_argument("--shift", type=int, default=TrainOptions.shift, help="random translation in pixels")
    t.add_argument("--widths", type=_int_list, default=(16, 32, 64), help="channels per stage")
    t.add_argument("--blocks", type=_int_list, default=(1, 1, 1), help="residual blocks per stage")
    t.add_argument("--feature-dim", type=int, default=128, help="feature space dimension")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    t.add_argument("--init", default=None, help="continue training from this classifier dir")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def cmd_train_classifier(args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    from training.datasets import open_dataset

    train = open_dataset(args.data, split="train", path=args.data_path)
    test = open_dataset(args.data, split="test", path=args.data_path)
    log(f"Training the evaluation classifier on {args.data}: {len(train)} train, {len(test)} test images")
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        flip=not args.no_flip,
        shift=args.shift,
        max_steps=args.max_steps,
        arch=dict(widths=args.widths, blocks=args.blocks, feature_dim=args.feature_dim),
        init=args.init,
    )
    model, summary = train_classifier(train, test, options, log=log)
    short = args.data.split(":", 1)[0]
    extra = {
        "name": Path(args.out).name,
        "metric_name": f"FD-{short.upper()}",
        "dataset": {"spec": args.data, "resolution": train.resolution, "channels": train.channels},
        "class_names": list(getattr(train, "class_names", [])),
        "test_accuracy": summary.get("test_accuracy"),
        "training": summary,
    }
    if args.init:
        extra["training"]["init"] = read_classifier_config(args.init).get("training")
    save_classifier(model, args.out, extra)
    log(f"Saved {args.out}: test accuracy {summary.get('test_accuracy')}, {summary['train_seconds']:.0f} s")
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("report", "train-classifier", "-h", "--help"):
        argv = ["report", *argv]
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "train-classifier":
            cmd_train_classifier(args)
            return 0
        options = EvalOptions(
            num_samples=args.num_samples,
            batch=args.batch,
            seed=args.seed,
            nfe=args.nfe,
            num_real=args.num_real,
            curve=not args.no_curve,
            curve_samples=args.curve_samples,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            device=args.device,
        )
        sources = [resolve_source(s) for s in args.model]
        run_evaluation(sources, args.out, args.classifier, args.data, args.data_path, options, args.inception)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
