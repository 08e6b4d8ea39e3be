"""One evaluation run: every source sampled from the same seeded noise, measured against the real test set,
the snapshot curves of fine-tune run dirs, and the report written."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_model
from training.evaluation.classifier import find_classifier, load_classifier, read_classifier_config
from training.evaluation.evaluator import Evaluator, SetResult
from training.evaluation.inception import load_inception_features
from training.evaluation.options import EvalOptions, Log
from training.evaluation.reference import class_ordered, load_reference, real_train_set
from training.evaluation.report import environment, summarize, write_report
from training.evaluation.samples import balanced_labels, generator_fn
from training.evaluation.sources import Source


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
        inception = load_inception_features(inception_path, device=options.device)
    resolutions = {s.config.img_resolution for s in sources}
    if len(resolutions) != 1:
        raise ValueError(f"all models must share one resolution, got {sorted(resolutions)}")
    resolution = resolutions.pop()
    channels = sources[0].config.img_channels
    data = data or sources[0].config.dataset_spec
    if not data:
        raise ValueError("no --data given and the first model's config.json names no dataset.spec")
    classifier_dir = find_classifier(classifier_dir)
    classifier = load_classifier(classifier_dir, device=options.device)
    clf_config = read_classifier_config(classifier_dir)
    metric_name = clf_config.get("metric_name", "FD")

    reference, reference_labels = load_reference(data, data_path, resolution, channels, options, log)
    label_dim = sources[0].config.label_dim
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
    write_report(out, metrics, results, grids, spectra, curves)
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
