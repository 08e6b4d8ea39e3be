"""The training loop shared by pre-training and fine-tuning: ticks, stats, snapshots, resume.

What is trained and how one step works lives in a ``TrainingTask``; this module owns everything around it:
the data stream, counting images, the progress display, ``stats.jsonl``, sample grids, snapshots, exact
resume (model, optimizer, EMA, RNG, data position) and a snapshot on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from training.checkpoint import atomic_write_bytes, load_state, save_state
from training.distributed import World, all_reduce_mean, barrier
from training.images import save_image_grid
from training.run_config import RunConfig
from training.rundir import STATE_NAME


class TrainingTask(Protocol):
    """One kind of training (EDM pre-training, D2O fine-tuning)."""

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int, images_seen: int) -> dict[str, float]:
        """One optimizer step on this rank's share of a global batch; returns scalar stats."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def sample_images(self) -> torch.Tensor:
        """A fixed-noise batch in [-1, 1] for the progress grid."""

    def export_model(self, out_dir: Path, images_seen: int) -> None:
        """Write a model dir (config.json + safetensors) of the current EMA weights."""


@dataclass
class LoopOptions:
    total_kimg: float
    batch_size: int  # global, across ranks
    tick_kimg: float = 1.0
    snapshot_ticks: int = 10
    snapshot_minutes: float = 15.0  # also snapshot when this much time passed since the last one
    keep_model_snapshots: bool = True  # a model dir per snapshot, for FD-versus-images curves
    seed: int = 0

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> LoopOptions:
        """The loop's options from a run's config (the fields pretrain and finetune share)."""
        return cls(
            total_kimg=cfg.duration,
            batch_size=cfg.batch,
            tick_kimg=cfg.tick,
            snapshot_ticks=cfg.snap,
            snapshot_minutes=cfg.snap_minutes,
            seed=cfg.seed,
        )


class RunLog:
    """Appends to ``log.txt`` and prints (main rank only)."""

    def __init__(self, run_dir: Path | None):
        self.path = run_dir / "log.txt" if run_dir is not None else None

    def __call__(self, msg: str) -> None:
        if self.path is None:
            return
        tqdm.write(msg, file=sys.stdout)
        with open(self.path, "a") as f:
            f.write(msg + "\n")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to snapshot and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- the loop


def drop_stats_after(path: Path, step: int) -> None:
    """Remove the ``stats.jsonl`` records of steps past ``step``, the resumed state's.

    A run killed hard (no final snapshot) has logged ticks that its last state does not hold; the resume trains
    them again, and without this each would be recorded twice. A line torn by the kill is dropped too.
    """
    if not path.is_file():
        return

    def held(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if held(line)]
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(kept).encode())


def run_training(
    task: TrainingTask,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
    options: LoopOptions,
    world: World,
    run_dir: Path,
    resume: bool = False,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train until ``total_kimg`` (or ``max_steps`` more steps); returns the final progress counters.

    ``stream`` yields this rank's slice of each global batch and has state_dict/load_state_dict.
    """
    log = RunLog(run_dir if world.is_main else None)
    progress = dict(step=0, images_seen=0, tick=0, snapshot=0)
    state_path = run_dir / STATE_NAME
    stats_path = run_dir / "stats.jsonl"
    if resume:
        state = load_state(state_path)
        task.load_state_dict(state["task"])
        stream.load_state_dict(state["stream"])
        progress.update(state["progress"])
        torch.set_rng_state(state["rng"][world.rank] if world.rank < len(state["rng"]) else state["rng"][0])
        if world.is_main:
            drop_stats_after(stats_path, progress["step"])
        log(f"Resumed from {state_path.name} at {progress['images_seen'] / 1000:.1f} kimg, step {progress['step']}")
    else:
        torch.manual_seed(options.seed * 9973 + world.rank)

    total = int(options.total_kimg * 1000)
    batch = options.batch_size
    start_step = progress["step"]
    tty = sys.stderr.isatty() and world.is_main
    bar = tqdm(
        total=total,
        initial=progress["images_seen"],
        unit="img",
        unit_scale=True,
        disable=not tty,
        dynamic_ncols=True,
        smoothing=0.05,
    )

    def snapshot(final: bool) -> None:
        rng = torch.get_rng_state()
        rngs = [torch.empty_like(rng) for _ in range(world.world_size)]
        if world.distributed:
            torch.distributed.all_gather(rngs, rng)
        else:
            rngs = [rng]
        if world.is_main:
            kimg = progress["images_seen"] // 1000
            save_state(
                state_path,
                dict(task=task.state_dict(), stream=stream.state_dict(), progress=dict(progress), rng=rngs),
            )
            images = task.sample_images()
            save_image_grid(images, run_dir / f"samples-{kimg:06d}.png", cols=getattr(task, "grid_cols", None))
            if options.keep_model_snapshots or final:
                task.export_model(run_dir / f"network-snapshot-{kimg:06d}", progress["images_seen"])
            log(f"Snapshot at {kimg} kimg{' (final)' if final else ''}")
        barrier(world)

    tick_start_time = time.time()
    tick_start_images = progress["images_seen"]
    last_snapshot_time = time.time()
    sums: dict[str, float] = {}
    count = 0
    with _StopFlag() as stop:
        while progress["images_seen"] < total:
            images, labels = next(stream)
            images = images.to(world.device, non_blocking=True)
            labels = labels.to(world.device, non_blocking=True)
            stats = task.train_step(images, labels, progress["step"], progress["images_seen"])
            progress["step"] += 1
            progress["images_seen"] += batch
            bar.update(batch)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1

            done = progress["images_seen"] >= total
            tick_done = progress["images_seen"] >= tick_start_images + options.tick_kimg * 1000
            stop_now = stop.requested or (max_steps is not None and progress["step"] - start_step >= max_steps)
            if world.distributed:  # every rank must agree to stop, or the collectives hang
                flag = torch.tensor([float(stop_now)], device=world.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop_now = bool(flag.item())
            if not (tick_done or done or stop_now):
                continue

            # Tick: stats line.
            elapsed = time.time() - tick_start_time
            tick_images = progress["images_seen"] - tick_start_images
            means = {k: all_reduce_mean(torch.tensor(v / max(count, 1)), world).item() for k, v in sums.items()}
            progress["tick"] += 1
            record = dict(
                tick=progress["tick"],
                kimg=progress["images_seen"] / 1000,
                step=progress["step"],
                **{k: round(v, 6) for k, v in means.items()},
                images_per_s=round(tick_images / max(elapsed, 1e-9), 3),
                sec_per_kimg=round(elapsed / max(tick_images, 1) * 1000, 3),
                peak_mem_mb=round(peak_memory_mb(world.device), 1),
                time=time.time(),
            )
            if world.is_main:
                with open(stats_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                shown = " ".join(f"{k} {v:.4g}" for k, v in means.items())
                log(
                    f"tick {record['tick']:<5d} kimg {record['kimg']:<9.2f} {shown} "
                    f"img/s {record['images_per_s']:<7.1f} sec/kimg {record['sec_per_kimg']:<7.2f} "
                    f"mem {record['peak_mem_mb']:.0f}MB"
                )
            sums, count = {}, 0

            timed = time.time() - last_snapshot_time >= options.snapshot_minutes * 60
            if world.distributed:
                flag = torch.tensor([float(timed)], device=world.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                timed = bool(flag.item())
            if done or stop_now or timed or progress["tick"] % options.snapshot_ticks == 0:
                progress["snapshot"] += 1
                snapshot(final=done or stop_now)
                last_snapshot_time = time.time()
            tick_start_time, tick_start_images = time.time(), progress["images_seen"]  # snapshots not counted
            if stop_now:
                if stop.requested:
                    log(f"Stopped on request; continue with --resume {run_dir}")
                break
    bar.close()
    return progress


__all__ = [
    "LoopOptions",
    "TrainingTask",
    "run_training",
]
