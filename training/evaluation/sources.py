"""What to evaluate: a ``--model`` argument resolved to a model dir, or a run dir and its snapshot model dirs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.checkpoint import CheckpointError, ModelConfig, read_model_config
from training.rundir import export_state_snapshot

SNAPSHOT_PREFIX = "network-snapshot-"


@dataclass
class Source:
    """One ``--model`` argument resolved: a model dir, or a run dir (its latest snapshot, plus all snapshots)."""

    label: str
    model_dir: Path
    kind: str  # 'generator' | 'denoiser'
    config: ModelConfig
    run_dir: Path | None = None
    snapshots: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def images_seen(self) -> int | None:
        return self.config.images_seen


def snapshot_images_seen(model_dir: Path) -> int:
    """Images seen by a snapshot: ``training.images_seen`` of its config, else the kimg in its name."""
    try:
        value = read_model_config(model_dir).images_seen
    except CheckpointError:
        value = None
    if value is not None:
        return value
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
    config = read_model_config(model_dir)
    return Source(
        label=label or path.name,
        model_dir=model_dir,
        kind=config.kind,
        config=config,
        run_dir=run_dir,
        snapshots=snapshots,
    )
