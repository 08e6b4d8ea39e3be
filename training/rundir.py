"""Run dirs: ``outdir/NNNNN-desc`` with its config.json, and model dirs exported from a run's training state.

Shared by the training CLIs (which create and resume run dirs), the training loop (which writes the state) and
the library modules that accept a pre-training run dir where a model dir is expected (teacher, evaluation).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError, load_state, read_json_object
from training.distributed import World
from training.pretrain_task import build_task
from training.run_config import RUN_CONFIG_NAME, ConfigError, PretrainConfig, RunConfig

STATE_NAME = "training-state.pt"


RUN_ID_LOCK_NAME = ".run-id.lock"


def create_run_dir(outdir: str | Path, desc: str) -> Path:
    """``outdir/NNNNN-desc`` with the next free number (EDM's habit).

    The scan and the mkdir hold an advisory lock on ``outdir/.run-id.lock``, so runs started side by side in the
    same outdir get different numbers (with different descs both mkdirs would otherwise succeed on one number).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / RUN_ID_LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        run_dir.mkdir()
    return run_dir


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def open_run_dir(cfg: RunConfig, world: World, extra: dict[str, Any]) -> Path:
    """Rank 0 creates ``outdir/NNNNN-desc`` and writes its config.json (the options, the world size, ``extra``);
    every rank learns the path."""
    run_dir = None
    if world.is_main:
        run_dir = create_run_dir(cfg.outdir, cfg.desc)
        save_run_config(run_dir, {**cfg.to_json(), "world_size": world.world_size, **extra})
    return share_path(run_dir, world)


def share_path(path: Path | None, world: World) -> Path:
    """Rank 0's path, on every rank."""
    if not world.distributed:
        return path
    obj = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(obj, src=0)
    return Path(obj[0])


def save_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_json(run_dir / RUN_CONFIG_NAME, config)


def export_state_snapshot(run_dir: str | Path) -> Path | None:
    """Write ``network-snapshot-KKKKKK`` (EMA weights) from a pre-training run's ``training-state.pt``.

    A fresh clone holds only the teacher's resumable state and run config (runs/README.md), while fine-tuning,
    pair making and evaluation read model dirs; this rebuilds the network from the run config and exports it.
    Returns the new model dir, or None when ``run_dir`` is not a pre-training run dir with a state.
    """
    run_dir = Path(run_dir)
    state_path, config_path = run_dir / STATE_NAME, run_dir / "config.json"
    if not (state_path.is_file() and config_path.is_file()):
        return None
    cfg = read_json_object(config_path, "a pre-training run dir holds its run config.json")
    if "kind" in cfg or "teacher" in cfg or "arch" not in cfg:  # a model dir, or a fine-tune run
        return None
    try:
        config = PretrainConfig.from_json(cfg, source=config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    with torch.random.fork_rng(devices=[]):  # build_task seeds torch; callers keep their RNG state
        task, _ = build_task(config, World())
    state = load_state(state_path)
    try:
        task.ema.net.load_state_dict(state["task"]["ema"])  # the exported weights; net and optimizer are unused
        images_seen = int(state["progress"]["images_seen"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{state_path}: does not fit the network of {config_path} ({e})") from e
    out = run_dir / f"network-snapshot-{images_seen // 1000:06d}"
    # Written beside and renamed into place, so that DDP ranks exporting at once never see half a model dir.
    tmp = run_dir / f".{out.name}.tmp-{os.getpid()}"
    task.export_model(tmp, images_seen)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process exported the same state first
    return out
