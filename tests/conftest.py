"""Shared fixtures: tiny random-weight models, written the way released models are."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from training.checkpoint import save_model
from training.configs import network_config
from training.evaluation.classifier import Classifier, ClassifierConfig, save_classifier
from training.precond import D2OPrecond, EDMPrecond, OneStepGenerator

TINY_CLASSES = [f"class-{i}" for i in range(10)]

torch.set_num_threads(1)  # tests are small; more threads only contend on shared CI cores


@pytest.fixture(autouse=True)
def _sample_cache_per_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """``training.evaluate`` keeps teachers' sample sets in ``runs/sample-cache`` of the working dir: in tests, a
    fresh dir per test outside the checkout (created only when a set is stored), so no test sees another's sets."""
    import training.evaluate

    path = tmp_path_factory.getbasetemp() / f"sample-cache-{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(training.evaluate, "DEFAULT_CACHE_DIR", str(path))


def tiny_denoiser(label_dim: int = 10, resolution: int = 16, channels: int = 1, precond=EDMPrecond, seed: int = 0):
    """A tiny net whose every weight is random: EDM zero-initialises output layers, which would make flat images."""
    torch.manual_seed(seed)
    kw = network_config("tiny")
    model_type = kw.pop("model_type")
    net = precond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, model_type=model_type, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def make_tiny_generator_dir(path: Path, label_dim: int = 10, seed: int = 0, name: str | None = None) -> Path:
    gen = OneStepGenerator(tiny_denoiser(label_dim=label_dim, precond=D2OPrecond, seed=seed))
    return save_model(gen, path, name=name or path.name, class_names=TINY_CLASSES[:label_dim])


@pytest.fixture
def tiny_generator_dir(tmp_path: Path) -> Path:
    """A class-conditional 16x16x1 one-step generator model dir with random weights."""
    return make_tiny_generator_dir(tmp_path / "tiny-gen")


@pytest.fixture
def tiny_denoiser_dir(tmp_path: Path) -> Path:
    return save_model(tiny_denoiser(), tmp_path / "tiny-teacher", class_names=TINY_CLASSES)


def make_classifier_dir(path: Path, widths=(8, 16), blocks=(1, 2), seed: int = 0) -> tuple[Path, Classifier]:
    """A saved 16x16 classifier with random weights and non-trivial BatchNorm statistics (eval mode matters)."""
    torch.manual_seed(seed)
    net = Classifier(ClassifierConfig(img_resolution=16, widths=widths, blocks=blocks, feature_dim=8))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return save_classifier(net.eval(), path), net
