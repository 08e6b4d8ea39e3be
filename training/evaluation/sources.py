"""What to evaluate: a ``--model`` argument resolved to a model dir, or a run dir and its snapshot model dirs; or
to a group, several dirs that are fine-tune seeds of one variant (``NAME=DIR,DIR,DIR``)."""

from __future__ import annotations

import json
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
    group: str | None = None  # the variant this is one fine-tune seed of
    run_seed: int | None = None  # the fine-tune run's --seed, from its run dir's config.json

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


def run_seed(path: Path) -> int | None:
    """The ``--seed`` a fine-tune run dir records in its config.json (for a snapshot model dir: its parent's)."""
    for config in (path / "config.json", path.parent / "config.json"):
        try:
            record = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "kind" not in record and isinstance(record.get("seed"), int):
            return record["seed"]  # a run's config (a model dir's names its kind and holds no seed)
    return None


def resolve_sources(spec: str) -> list[Source]:
    """One ``--model`` argument: ``[LABEL=]PATH`` is one source; ``NAME=DIR,DIR,...`` is a group, the same
    variant fine-tuned with different seeds, each member labelled ``NAME/DIRNAME`` and reported with the group's
    mean and sd."""
    name, sep, paths = spec.partition("=")
    if not sep or Path(spec).exists() or "," not in paths:
        return [resolve_source(spec)]
    parts = [p for p in paths.split(",") if p.strip()]
    if not name or len(parts) < 2:
        raise CheckpointError(f"--model {spec}: a group is NAME=DIR,DIR[,DIR...] (at least two dirs, one name)")
    names = [Path(p.strip()).name for p in parts]
    if len(set(names)) < len(names):  # e.g. the same --ema-extra track of several runs: name it by its run too
        names = ["/".join(Path(p.strip()).parts[-2:]) for p in parts]
    members = [resolve_source(f"{name}/{member}={p}") for member, p in zip(names, parts, strict=True)]
    if len({m.label for m in members}) < len(members):
        raise CheckpointError(f"--model {spec}: two members share a dir name; name each dir differently")
    if len({m.kind for m in members}) > 1:
        raise CheckpointError(f"--model {spec}: a group mixes generators and denoisers")
    for m in members:
        m.group = name
    return members


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
        run_seed=run_seed(path),
    )
