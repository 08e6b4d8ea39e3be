"""Teachers from model dirs and from pre-training run dirs (latest snapshot, or the newer training-state EMA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_CLASSES, tiny_denoiser
from training.checkpoint import CheckpointError, save_model, save_state
from training.teacher import load_teacher


def test_model_dir_and_generator_refused(tiny_denoiser_dir: Path, tiny_generator_dir: Path):
    t = load_teacher(tiny_denoiser_dir)
    assert t.class_names == TINY_CLASSES and not t.net.training
    assert all(not p.requires_grad for p in t.net.parameters())
    with pytest.raises(CheckpointError, match="must be a denoiser"):
        load_teacher(tiny_generator_dir)
    with pytest.raises(CheckpointError, match="neither a model dir"):
        load_teacher(tiny_denoiser_dir.parent)


def test_run_dir_uses_latest_snapshot_or_newer_state(tmp_path: Path):
    run = tmp_path / "00003-fmnist"
    old, new = tiny_denoiser(seed=1), tiny_denoiser(seed=2)
    save_model(old, run / "network-snapshot-000001", extra=dict(training=dict(images_seen=1000)))
    save_model(new, run / "network-snapshot-000010", extra=dict(training=dict(images_seen=10000)))
    t = load_teacher(run)
    assert t.info["snapshot"] == "network-snapshot-000010" and "ema_from" not in t.info
    assert all(torch.equal(a, b) for a, b in zip(t.net.state_dict().values(), new.state_dict().values(), strict=True))
    newest = tiny_denoiser(seed=3)
    save_state(run / "training-state.pt", dict(task=dict(ema=newest.state_dict()), progress=dict(images_seen=12000)))
    t2 = load_teacher(run)
    assert t2.info["ema_from"] == "training-state.pt" and t2.info["images_seen"] == 12000
    assert t2.info["fingerprint"] != t.info["fingerprint"]
    assert all(
        torch.equal(a, b) for a, b in zip(t2.net.state_dict().values(), newest.state_dict().values(), strict=True)
    )
