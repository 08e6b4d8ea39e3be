"""Find and load a fine-tuning teacher: a pre-training run dir, or a denoiser model dir (ours or imported from EDM)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError, ModelConfig, load_model, load_state, read_model_config
from training.precond import EDMPrecond
from training.rundir import STATE_NAME, export_state_snapshot

SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d+)$")


@dataclass
class Teacher:
    net: EDMPrecond
    model_dir: Path  # the model dir whose config built ``net``
    config: ModelConfig
    info: dict[str, Any] = field(default_factory=dict)  # recorded in run configs and exported model configs

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's keys and float32 bytes: the teacher a run or a pairs file was made from."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _is_model_dir(path: Path) -> bool:
    try:
        read_model_config(path)
    except CheckpointError:
        return False
    return True


def latest_snapshot(run_dir: Path) -> Path | None:
    snaps = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := SNAPSHOT_RE.match(p.name))]
    return max(snaps)[1] if snaps else None


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """The teacher denoiser (EMA weights) behind ``path``, frozen and in eval mode.

    ``path`` is a model dir of kind ``denoiser`` or a pre-training run dir. For a run dir the latest
    ``network-snapshot-*`` gives the architecture (one is exported from ``training-state.pt`` first where the
    run dir holds none, as a fresh clone's teacher does); when ``training-state.pt`` is newer than that snapshot,
    its EMA weights (``state['task']['ema']``) are used instead.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--teacher {path}: no such directory (expected a run dir or a model dir)")
    info: dict[str, Any] = {"path": str(path)}
    if _is_model_dir(path):
        model_dir = path
    else:
        model_dir = latest_snapshot(path) or export_state_snapshot(path)
        if model_dir is None:
            raise CheckpointError(
                f"--teacher {path}: neither a model dir (config.json of a model) nor a run dir with network-snapshot-*"
            )
        info["snapshot"] = model_dir.name
    config = read_model_config(model_dir)
    if config.kind != "denoiser":
        raise CheckpointError(
            f"--teacher {model_dir}: kind {config.kind!r}; a teacher must be a denoiser (a pre-trained or "
            "imported EDM model), not a one-step generator"
        )
    net = load_model(model_dir)
    assert isinstance(net, EDMPrecond)
    images_seen = config.images_seen
    state_path = path / STATE_NAME
    if model_dir is not path and state_path.is_file():
        state = load_state(state_path)
        seen = int(state.get("progress", {}).get("images_seen", -1))
        if images_seen is None or seen > int(images_seen):
            try:
                net.load_state_dict(state["task"]["ema"], strict=True)
            except (KeyError, RuntimeError) as e:
                raise CheckpointError(f"{state_path}: no EMA that fits {model_dir.name} ({e})") from e
            info["ema_from"] = STATE_NAME
            images_seen = seen
        del state
    spdx, license_url = config.resolved_license  # a fine-tune carries its teacher's licence forward
    info.update(
        model_dir=str(model_dir),
        images_seen=images_seen,
        precond=config.precond,
        fingerprint=state_fingerprint(net.state_dict()),
        license=spdx,
        license_url=license_url,
        origin=config.resolved_origin,
    )
    net = net.to(device).eval().requires_grad_(False)
    return Teacher(net=net, model_dir=model_dir, config=config, info=info)
