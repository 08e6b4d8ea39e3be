"""Typed run configs: every option of a pre-training or fine-tuning run, as its run dir's ``config.json`` holds it.

The CLIs (``training.pretrain``, ``training.finetune``) build one from their arguments; ``--resume RUN_DIR`` reads
it back with ``from_json``; the tasks and the loop read attributes. Each config is a frozen dataclass whose fields
are checked on construction (types, choices, ranges): a ``ConfigError`` names the field and, for a file, the file.

``to_json`` writes the fields in declaration order (the CLI's option order), tuples as lists. ``from_json`` fills a
field the file lacks (a run dir written before the option existed) with its default, and ignores keys that are
not fields: what the run dir records beside the options (``world_size``, parameter counts, the freeze report).
One exception: a run dir written before ``precision`` existed ran in fp32 (or bf16 where its old ``bf16`` key was
true) and resumes so, rather than in the new default ``auto``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from training.checkpoint import read_json_object
from training.configs import NETWORK_CONFIGS
from training.diffaugment import parse_policy
from training.discriminator import DEFAULT_SIGMAS
from training.ema import EMATrack, parse_ema_track
from training.freeze import FREEZE_MODES
from training.precond import SIGMA_MAX
from training.steps import PRECISIONS

RUN_CONFIG_NAME = "config.json"
OBJECTIVES = ("gan", "distill", "gan+distill")
DISCS = ("teacher", "scratch", "backbone")
DISC_CONDS = ("projection", "backbone")
DISTILL_LOSSES = ("l2", "feature")

C = TypeVar("C", bound="RunConfig")


class ConfigError(ValueError):
    """A run config field of the wrong type or out of range; the message names the field (and the file)."""


def _check(name: str, value: Any, hint: Any) -> Any:
    """``value`` as field ``name`` of type ``hint`` holds it (lists become tuples, dicts read-only), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(name, value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field {name!r} must be a list, got {value!r}")
        return tuple(_check(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"field {name!r} must be a JSON object, got {value!r}")
        return types.MappingProxyType(copy.deepcopy(dict(value)))
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),  # 100 stays 100, as argparse left it
        str: lambda v: isinstance(v, str),
    }[hint]
    if not ok(value):
        raise ConfigError(f"field {name!r} must be of type {hint.__name__}, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"field {name!r} must be one of {list(choices)}, got {value!r}")


def _at_least(name: str, value: float | None, minimum: float, strict: bool = False) -> None:
    if value is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"field {name!r} must be {'>' if strict else '>='} {minimum}, got {value!r}")


class RunConfig:
    """What pre-training and fine-tuning configs share: the loop's options and the (de)serialization."""

    # Every run config has these fields (the loop and the run dir read them).
    duration: float  # kimg
    batch: int  # global, across ranks
    batch_gpu: int | None  # images per rank per accumulation round (None: the rank's whole share at once)
    precision: str  # auto | fp32 | bf16 | fp16 (training.steps); a task records what auto resolved to
    tick: float  # kimg between stats lines
    snap: int  # ticks between snapshots
    snap_minutes: float
    seed: int
    outdir: str
    desc: str | None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), hints[f.name]))
        _at_least("duration", self.duration, 0)
        _at_least("batch", self.batch, 1)
        _at_least("batch_gpu", self.batch_gpu, 1)
        _choice("precision", self.precision, PRECISIONS)
        _at_least("tick", self.tick, 0, strict=True)
        _at_least("snap", self.snap, 1)
        _at_least("snap_minutes", self.snap_minutes, 0)
        self._validate()
        if self.desc is None:
            object.__setattr__(self, "desc", self.default_desc())

    def _validate(self) -> None:
        """Checks of one kind of run (choices, ranges), beyond the field types."""

    def check_resumed_from(self, saved: RunConfig) -> None:
        """ConfigError where this config, a resume of the run saved as ``saved`` with changed options, would
        compute something else than the run would have."""

    def default_desc(self) -> str:
        """The run dir's name suffix where ``desc`` is not given."""
        raise NotImplementedError

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any]) -> C:
        """A config from any mapping (parsed arguments, a run's config.json): fields only, defaults for the rest."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in options.items() if k in names})

    @classmethod
    def from_json(cls: type[C], obj: Any, source: str | Path = RUN_CONFIG_NAME) -> C:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{source}: expected a JSON object")
        if "precision" not in obj:  # written before the option: it ran in fp32, or in bf16 with the old flag
            obj = {**obj, "precision": "bf16" if obj.get("bf16") is True else "fp32"}
        try:
            return cls.from_options(obj)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e

    @classmethod
    def read(cls: type[C], run_dir: str | Path) -> C:
        """The config of the run in ``run_dir``."""
        return cls.read_with_json(run_dir)[0]

    @classmethod
    def read_with_json(cls: type[C], run_dir: str | Path) -> tuple[C, dict[str, Any]]:
        """The config of the run in ``run_dir`` and the JSON object it was read from, keys the config does not
        hold (world size, teacher record) included."""
        path = Path(run_dir) / RUN_CONFIG_NAME
        saved = read_json_object(path, f"is {run_dir} a run dir?")
        return cls.from_json(saved, source=path), saved

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """``python -m training.pretrain``: EDM denoising training of a teacher."""

    # data
    data: str = "fmnist"
    data_path: str | None = None
    resolution: int | None = None  # None: the data's own
    xflip: bool = False
    uncond: bool = False
    # network
    arch: str = "fmnist"  # a name in training.configs.NETWORK_CONFIGS
    dropout: float | None = None  # None: the arch's
    # optimization
    duration: float = 2000
    batch: int = 64
    batch_gpu: int | None = None
    precision: str = "auto"
    lr: float = 1e-3
    lr_rampup_kimg: float = 100
    ema_halflife_kimg: float = 50
    ema_rampup: float = 0.05
    grad_clip: float = 0  # 0: off
    seed: int = 0
    # I/O
    outdir: str = "runs"
    desc: str | None = None
    tick: float = 2
    snap: int = 10
    snap_minutes: float = 15
    grid_size: int = 60
    grid_nfe: int = 35
    # Set by the task from the data set (recorded for the exported model dirs).
    class_names: tuple[str, ...] = ()

    def default_desc(self) -> str:
        return f"{self.data.split(':')[0]}-{self.arch}"

    def _validate(self) -> None:
        _choice("arch", self.arch, tuple(NETWORK_CONFIGS))
        _at_least("resolution", self.resolution, 1)
        _at_least("lr", self.lr, 0)
        _at_least("lr_rampup_kimg", self.lr_rampup_kimg, 0)
        _at_least("grad_clip", self.grad_clip, 0)
        _at_least("grid_size", self.grid_size, 0)
        _at_least("grid_nfe", self.grid_nfe, 1)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    """``python -m training.finetune``: D2O / D2O-F (or the distillation baseline) from an EDM teacher."""

    preset: str | None = None
    # teacher and data
    teacher: str | None = None  # run dir or denoiser model dir
    data: str = "fmnist"
    data_path: str | None = None
    # method
    objective: str = "gan"
    freeze: str = "d2o-f"
    disc: str = "teacher"
    disc_width: int = 64
    disc_sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    disc_backbone: str | None = None
    disc_backbone_config: str | None = None
    disc_mbstd: int = 0  # minibatch-stddev group size in D's heads (0: off)
    disc_cond: str = "projection"  # how D sees the class: heads' projection + backbone, or the backbone only
    r1_gamma: float = 1e-4
    r1_interval: int = 16
    augment: str = "none"  # DiffAugment policy for what D sees (training.diffaugment)
    pairs: str | None = None
    distill_loss: str = "l2"
    distill_weight: float = 1.0
    mode_seeking: float = 0.0  # weight of MSGAN's mode-seeking term in G's loss (0: off)
    sigma: float = SIGMA_MAX
    # optimization
    duration: float = 100
    batch: int = 32
    batch_gpu: int | None = None
    precision: str = "auto"
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    g_lr_end: float | None = None  # None: G's learning rate stays g_lr; else a cosine from g_lr to this at `duration`
    ema_halflife_kimg: float = 500
    ema_rampup: float = 0.05
    ema_extra: tuple[str, ...] = ()  # more EMA tracks of G, HALFLIFE_KIMG[:RAMPUP] each (training.ema.EMATrack)
    dropout: float = 0.0
    seed: int = 0
    # I/O
    outdir: str = "runs"
    desc: str | None = None
    tick: float = 2
    snap: int = 5
    snap_minutes: float = 15
    grid_size: int = 60
    # Set by the task from the teacher (checked again on resume) and the data set.
    teacher_info: Mapping[str, Any] | None = None
    class_names: tuple[str, ...] = ()

    def default_desc(self) -> str:
        data = self.data.split(":")[0].split("/")[-1].removesuffix(".zip")
        return "-".join([data, self.objective.replace("+", "-"), self.freeze])

    def _validate(self) -> None:
        _choice("objective", self.objective, OBJECTIVES)
        _choice("freeze", self.freeze, FREEZE_MODES)
        _choice("disc", self.disc, DISCS)
        _choice("disc_cond", self.disc_cond, DISC_CONDS)
        _choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        try:
            parse_policy(self.augment)
        except ValueError as e:
            raise ConfigError(f"field 'augment': {e}") from None
        _at_least("disc_width", self.disc_width, 1)
        _at_least("disc_mbstd", self.disc_mbstd, 0)
        if not self.disc_sigmas or min(self.disc_sigmas) <= 0:
            raise ConfigError(f"field 'disc_sigmas' must be positive noise levels, got {list(self.disc_sigmas)}")
        _at_least("r1_gamma", self.r1_gamma, 0)
        _at_least("mode_seeking", self.mode_seeking, 0)
        if self.mode_seeking and not self.use_gan:
            raise ConfigError("field 'mode_seeking' needs a GAN objective (gan or gan+distill)")
        _at_least("r1_interval", self.r1_interval, 0)
        _at_least("sigma", self.sigma, 0, strict=True)
        _at_least("g_lr", self.g_lr, 0)
        _at_least("d_lr", self.d_lr, 0)
        _at_least("g_lr_end", self.g_lr_end, 0)
        _at_least("grid_size", self.grid_size, 0)
        self.ema_tracks()

    def g_lr_at(self, images_seen: int) -> float:
        """G's learning rate after ``images_seen`` images: ``g_lr``, or the cosine from it to ``g_lr_end`` over
        ``duration`` (held at ``g_lr_end`` beyond). A function of the images seen, so a resumed run continues it
        (a resume may not change ``duration`` then: ``check_resumed_from``)."""
        if self.g_lr_end is None:
            return self.g_lr
        progress = min(max(images_seen / max(self.duration * 1000, 1e-8), 0.0), 1.0)
        return self.g_lr_end + (self.g_lr - self.g_lr_end) * 0.5 * (1 + math.cos(math.pi * progress))

    def check_resumed_from(self, saved: RunConfig) -> None:
        if self.g_lr_end is not None and self.duration != saved.duration:
            raise ConfigError(
                f"--duration {self.duration:g} would change G's cosine learning rate schedule, which spans the run's "
                f"duration ({saved.duration:g} kimg); resume without --duration, or start a new run"
            )

    @property
    def main_ema_track(self) -> EMATrack:
        """The run's own EMA of G (``ema_halflife_kimg``, ``ema_rampup``), the one its snapshots hold."""
        return EMATrack(self.ema_halflife_kimg, self.ema_rampup)

    def ema_tracks(self) -> list[EMATrack]:
        """The extra EMA tracks, checked: each parses, and no two (nor one and the run's own EMA) are the same."""
        tracks, seen = [], {self.main_ema_track}
        for text in self.ema_extra:
            try:
                track = parse_ema_track(text, self.ema_rampup)
            except ValueError as e:
                raise ConfigError(f"field 'ema_extra': {e}") from None
            if track in seen:
                raise ConfigError(f"field 'ema_extra': {text!r} repeats an EMA the run already keeps")
            seen.add(track)
            tracks.append(track)
        return tracks

    @property
    def use_gan(self) -> bool:
        return self.objective != "distill"

    @property
    def use_distill(self) -> bool:
        return self.objective != "gan"
