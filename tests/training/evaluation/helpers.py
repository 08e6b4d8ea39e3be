"""Tiny model dirs, a fine-tune run dir with two snapshots, three fine-tune seeds of one variant and a tiny
classifier dir, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint import save_model
from training.configs import network_config
from training.evaluation.classifier import Classifier, ClassifierConfig, save_classifier
from training.precond import D2OPrecond, EDMPrecond, OneStepGenerator

CLASSES = [f"c{i}" for i in range(10)]


def denoiser(cls=EDMPrecond, seed=0):
    torch.manual_seed(seed)
    kw = network_config("tiny")
    model_type = kw.pop("model_type")
    net = cls(img_resolution=16, img_channels=1, label_dim=10, model_type=model_type, **kw)
    # Freshly initialised EDM U-Nets output zeros (zero-init last layers): perturb them so samples depend on noise.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def training_extra(stage: str, images_seen: int) -> dict:
    return {
        "dataset": {"spec": "synthetic:64", "resolution": 16},
        "training": {"stage": stage, "images_seen": images_seen},
    }


def make_models(root: Path) -> dict[str, Path]:
    """A teacher, a generator, a fine-tune run dir (snapshots at 48 and 2048 images) and a classifier, in root."""
    teacher = save_model(denoiser(), root / "teacher", class_names=CLASSES, extra=training_extra("pretrain", 1000))
    generator = save_model(
        OneStepGenerator(denoiser(D2OPrecond)),
        root / "gen",
        class_names=CLASSES,
        extra=training_extra("finetune", 64),
    )
    run = root / "runs" / "00001-tiny-d2o-f"
    run.mkdir(parents=True)
    (run / "stats.jsonl").write_text("{}\n")
    for kimg, seed in ((0, 0), (2, 1)):
        save_model(
            OneStepGenerator(denoiser(D2OPrecond, seed)),
            run / f"network-snapshot-{kimg:06d}",
            class_names=CLASSES,
            extra=training_extra("finetune", kimg * 1000 + 48),
        )
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(img_resolution=16, widths=(8, 16), blocks=(1, 1), feature_dim=16)).eval()
    save_classifier(clf, root / "clf", extra={"metric_name": "FD-SYN", "test_accuracy": 0.1})
    return {"root": root, "teacher": teacher, "generator": generator, "run": run, "classifier": root / "clf"}


def make_seed_runs(root: Path) -> list[Path]:
    """Three fine-tune seeds of one variant: run dirs whose config.json records --seed, one snapshot each."""
    seeds = []
    for seed in (0, 1, 2):
        run = root / "runs" / f"0001{seed}-tiny-s{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"seed": seed, "desc": f"tiny-s{seed}"}))
        save_model(
            OneStepGenerator(denoiser(D2OPrecond, 10 + seed)),
            run / "network-snapshot-000002",
            class_names=CLASSES,
            extra=training_extra("finetune", 2048),
        )
        seeds.append(run)
    return seeds
