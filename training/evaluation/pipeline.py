"""One evaluation run: every source sampled from the same seeded noise (the seed range of the protocol), measured
against the real test set, the groups of fine-tune seeds, the budget curves of fine-tune run dirs, and the report
written."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_model
from training.datasets import FolderDataset, open_dataset
from training.evaluation.classifier import DEFAULT_CLASSIFIER
from training.evaluation.curves import (
    budget_summary,
    earlier_teacher,
    group_curves,
    plotted_curves,
    snapshot_curve,
    teacher_images,
)
from training.evaluation.evaluator import Evaluator, SetResult
from training.evaluation.features import build_extractor, choose_features, inception_features
from training.evaluation.groups import group_table
from training.evaluation.options import EvalOptions, Log
from training.evaluation.protocol import describe_seeds, seeds_record
from training.evaluation.reference import class_ordered, load_reference, other_split, real_train_set
from training.evaluation.report import environment, summarize, write_report
from training.evaluation.sample_cache import CachedSet, model_fingerprint, set_key
from training.evaluation.samples import balanced_labels, generator_fn
from training.evaluation.sources import Source


def known_teacher(sources: Sequence[Source]) -> str | None:
    """A teacher for label-free features: the first denoiser evaluated, else the teacher a generator's config
    records (where that path exists here)."""
    for src in sources:
        if src.kind == "denoiser":
            return str(src.run_dir or src.model_dir)
    for src in sources:
        record = (src.config.training or {}).get("teacher")
        for key in ("path", "model_dir"):
            path = record.get(key) if isinstance(record, Mapping) else None
            if isinstance(path, str) and Path(path).is_dir():
                return path
    return None


def run_evaluation(
    sources: Sequence[Source],
    out_dir: str | Path,
    classifier_dir: str | Path | None = DEFAULT_CLASSIFIER,
    data: str | None = None,
    data_path: str | None = None,
    options: EvalOptions | None = None,
    inception_path: str | None = None,
    log: Log = print,
    features: str = "auto",
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate every source, write ``metrics.json``, ``report.md`` and the plots; returns the metrics dict.

    ``features`` picks the feature space (``training.evaluation.features.choose_features``): ``auto`` takes the
    evaluation classifier for class-conditional models on labelled data, and otherwise a space that needs no
    labels, the encoder of ``teacher`` (default: the first denoiser evaluated, or the teacher a generator records)
    or Inception from ``inception_path``. With the classifier, ``inception_path`` adds an FID column.
    """
    options = options or EvalOptions()
    if not sources:
        raise ValueError("nothing to evaluate: pass at least one --model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    resolutions = {s.config.img_resolution for s in sources}
    if len(resolutions) != 1:
        raise ValueError(f"all models must share one resolution, got {sorted(resolutions)}")
    resolution = resolutions.pop()
    channels = sources[0].config.img_channels
    data = data or sources[0].config.dataset_spec
    if not data:
        raise ValueError("no --data given and the first model's config.json names no dataset.spec")
    split = options.reference_split
    probe = open_dataset(data, split=split, path=data_path)
    labelled = probe.num_classes > 0
    has_splits = not isinstance(probe, FolderDataset)  # a folder is one set: reference and floor share its images
    choice = choose_features(
        features,
        data=data,
        labelled=labelled,
        conditional=all(s.config.label_dim > 0 for s in sources),
        classifier=classifier_dir,
        teacher=teacher if teacher is not None else known_teacher(sources),
        inception=inception_path,
    )
    extractor = build_extractor(choice.kind, choice.source, device=options.device)
    log(f"Features: {extractor.description} ({choice.reason})")
    inception = None
    if inception_path is not None and choice.kind != "inception":
        inception = inception_features(inception_path, device=options.device)
    metric_name = extractor.metric_name

    reference, reference_labels = load_reference(data, data_path, resolution, channels, options, log)
    label_dim = sources[0].config.label_dim
    grid_idx = class_ordered(reference_labels, options.grid, label_dim)
    evaluator = Evaluator(extractor, reference, options, reference[grid_idx], inception, log, reference_labels)
    seeds = options.sample_seeds
    n = len(seeds)
    log(f"Samples: {n} per set from the {describe_seeds(seeds)}")

    results: list[SetResult] = []
    grids: list[tuple[str, torch.Tensor]] = [(f"real ({split})" if has_splits else "real", evaluator.real_grid)]
    spectra: dict[str, np.ndarray] = {"real": evaluator.real_spectrum.mean()}

    floor = other_split(split)
    train_images, train_labels = real_train_set(data, data_path, resolution, channels, n, options.floor_seed, floor)
    res, _, _ = evaluator.measure(
        f"real ({floor} split)" if has_splits else "real (a random subset)",
        "real",
        lambda a, b: train_images[a:b],
        train_labels,
        len(train_images),
    )
    res.seconds = 0.0
    results.append(res)

    curves: dict[str, list[dict[str, Any]]] = {}
    evaluated_teacher = next((s.images_seen for s in sources if s.kind == "denoiser" and s.images_seen), None)
    for src in sources:
        model = load_model(src.model_dir, device=options.device)
        label_dim = model.label_dim
        labels = balanced_labels(n, label_dim)
        if src.kind == "denoiser":
            fingerprint = model_fingerprint(src.model_dir) if options.sample_cache else None
            for nfe in options.nfe:
                fn = generator_fn(model, "denoiser", nfe, seeds, labels, options.device)
                cached = None
                if options.sample_cache:
                    key = set_key(src.model_dir, nfe, seeds, labels, options.device, fingerprint)
                    fn = cached = CachedSet(Path(options.sample_cache), key, fn, n)
                    if cached.hit:
                        log(f"{src.label} NFE {nfe}: the set from the sample cache ({cached.path.name})")
                res, grid, spec = evaluator.measure(
                    src.label, "teacher", fn, labels, n, nfe, src.images_seen, str(src.model_dir), seeds
                )
                if cached is not None and cached.hit and cached.seconds is not None:
                    res.seconds = cached.seconds  # the generation's own time, for the images/s column
                res.group, res.run_seed = src.group, src.run_seed
                results.append(res)
                grids.append((f"{src.label}, Heun NFE {nfe}", grid))
                if nfe == max(options.nfe):
                    spectra[f"{src.label} (NFE {nfe})"] = spec
        else:
            fn = generator_fn(model, "generator", 1, seeds, labels, options.device)
            res, grid, spec = evaluator.measure(
                src.label, "one-step", fn, labels, n, 1, src.images_seen, str(src.model_dir), seeds
            )
            res.group, res.run_seed = src.group, src.run_seed
            results.append(res)
            grids.append((f"{src.label}, 1 step", grid))
            spectra[f"{src.label} (1 step)"] = spec
            if options.curve and len(src.snapshots) > 1:
                curves[src.label] = snapshot_curve(src, evaluator, options, res, evaluated_teacher)

    groups = group_table(results)
    summary = summarize(results, groups)
    members: dict[str, list[str]] = {}
    for src in sources:
        if src.group is not None:
            members.setdefault(src.group, []).append(src.label)
    plotted = plotted_curves(curves, members, group_curves(curves, members, options.curve_kimg))
    metrics: dict[str, Any] = {
        "metric_name": metric_name,
        "data": data,
        "resolution": resolution,
        "classifier": (
            {
                "dir": extractor.info["dir"],
                "test_accuracy": extractor.info["test_accuracy"],
                "feature_dim": extractor.feature_dim,
            }
            if extractor.kind == "classifier"
            else None
        ),
        "features": {**extractor.to_json(), "reason": choice.reason},
        "reference_split": split if has_splits else None,
        "inception": inception_path if inception is not None else None,
        "options": asdict(options),
        "reference_images": len(reference),
        "class_names": list(sources[0].config.class_names),
        "seeds": seeds_record(seeds),
        "bootstrap": {"rounds": options.bootstrap, "level": 0.95, "seed": 0} if options.bootstrap else None,
        "results": [r.row() for r in results],
        "groups": groups,
        "curves": curves,
        "budget": None,  # below: it may compare this run's record with an earlier report's
        "spectra": {k: v.tolist() for k, v in spectra.items()},
        "summary": summary,
        "environment": environment(options.device),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    target = summary.get("teacher_best")
    if target is None and options.teacher_metrics and curves:
        target = earlier_teacher(options.teacher_metrics, {**metrics, "seeds": seeds_record(options.curve_seeds)})
        log(f"Budget target: the teacher's best FD {target['fd']:.4g} from {options.teacher_metrics}")
    pretrain = next((t for t in map(teacher_images, sources) if t), None) or evaluated_teacher
    metrics["budget"] = {
        "seeds": seeds_record(options.curve_seeds) if curves else None,
        "teacher_images": pretrain or (target or {}).get("images_seen"),
        "teacher": target,
        "curves": plotted,
        "crossings": budget_summary(plotted, target),
    }
    write_report(out, metrics, results, grids, spectra)
    log(f"Wrote {out / 'report.md'}, {out / 'metrics.json'} and plots ({metrics['wall_seconds']:.0f} s)")
    return metrics
