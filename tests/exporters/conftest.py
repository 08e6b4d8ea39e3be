"""Fixtures for the exporter tests: small generators with weights that make the outputs non-trivial.

EDM's initialization zeroes the last convolutions, so a freshly built generator outputs ~c_skip * z (values
near 0) and almost any graph would pass parity; these fixtures redraw every weight so images span [-1, 1]
and depend on the class label. Exports are slow (torch.export), so each graph is exported once per session.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from exporters.onnx import export_onnx
from training.checkpoint import save_model
from training.configs import network_config
from training.precond import D2OPrecond, OneStepGenerator

CLASSES = [f"class-{i}" for i in range(10)]


def randomize_(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Redraw weights ~ N(0, 1/fan_in), biases and norm shifts ~ N(0, 0.1^2), norm scales ~ N(1, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            else:
                scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + scale)
    return module


def make_generator_dir(
    path: Path, config: str = "tiny", *, resolution: int = 16, channels: int = 1, label_dim: int = 10, seed: int = 0
) -> Path:
    torch.manual_seed(seed)
    kw = network_config(config)
    model_type = kw.pop("model_type")
    den = D2OPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, model_type=model_type, **kw)
    gen = randomize_(OneStepGenerator(den), seed=seed + 1)
    return save_model(gen, path, name=path.name, class_names=CLASSES[:label_dim])


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-conditional 16x16x1 tiny generator, randomized weights."""
    return make_generator_dir(tmp_path_factory.mktemp("models") / "tiny-cond")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_dir: Path) -> Path:
    """``tiny_dir/model.onnx`` exported with the defaults (uint8 output, parity on batches 1, 7, 64)."""
    return export_onnx(tiny_dir)
