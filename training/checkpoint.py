"""On-disk formats: training state (torch.save of tensors, read with weights_only) and released model dirs.

A model dir is ``config.json`` + ``generator.safetensors`` (one-step generator) or ``denoiser.safetensors``
(a teacher). The weights are the preconditioner's state dict, keys ``model.*`` as in EDM. The config alone
rebuilds the module; no code is ever pickled. ``config.json`` is read into a :class:`ModelConfig`, checked once
here, so that its readers (training, exporters, service) use typed fields instead of dict lookups.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from training.precond import SIGMA_MAX, D2OPrecond, EDMPrecond, OneStepGenerator

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = {"generator": "generator.safetensors", "denoiser": "denoiser.safetensors"}
PRECONDS: dict[str, type[EDMPrecond]] = {"edm": EDMPrecond, "d2o": D2OPrecond}

# Licences a model dir records (SPDX identifiers). The project's own models are Apache-2.0; EDM's released
# checkpoints are CC BY-NC-SA 4.0, and a model fine-tuned from one carries that licence forward (see NOTICE).
PROJECT_LICENSE = "Apache-2.0"
PROJECT_LICENSE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
EDM_LICENSE = "CC-BY-NC-SA-4.0"
EDM_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"


class CheckpointError(ValueError):
    """A model dir or training snapshot that is missing, truncated, tampered with or of the wrong format."""


class ModelKindError(CheckpointError):
    """A config.json that is not a generator's or a denoiser's (a classifier's, a run's): ``kind`` says what it is."""

    def __init__(self, message: str, kind: object):
        super().__init__(message)
        self.kind = kind


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- denoiser construction


def precond_kwargs(net: EDMPrecond) -> dict[str, Any]:
    """Constructor arguments that rebuild ``net`` (EDM's ``init_kwargs``)."""
    kw = dict(
        img_resolution=net.img_resolution,
        img_channels=net.img_channels,
        label_dim=net.label_dim,
        use_fp16=net.use_fp16,
        sigma_min=net.sigma_min,
        sigma_max=net.sigma_max,
        sigma_data=net.sigma_data,
        model_type=net.model_type,
        **net.model_kwargs,
    )
    if isinstance(net, D2OPrecond):
        kw["eps"] = net.eps
    return _jsonable(kw)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj == float("inf"):
        return "inf"
    return obj


def _from_json(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: (float("inf") if v == "inf" else v) for k, v in kw.items()}


def build_precond(precond: str, kwargs: dict[str, Any]) -> EDMPrecond:
    if precond not in PRECONDS:
        raise CheckpointError(f"unknown preconditioning {precond!r}; expected one of {sorted(PRECONDS)}")
    return PRECONDS[precond](**_from_json(kwargs))


def precond_name(net: EDMPrecond) -> str:
    return "d2o" if isinstance(net, D2OPrecond) else "edm"


# ---------------------------------------------------------------- model config


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII without spaces: it travels in HTTP headers
# Keys of config.json with a field of their own; any other key is kept as read in ``ModelConfig.extra``.
_MODEL_KEYS = (
    "format_version",
    "name",
    "kind",
    "precond",
    "precond_kwargs",
    "img_resolution",
    "img_channels",
    "label_dim",
    "class_names",
    "weights",
    "weights_sha256",
    "sigma",
    "dataset",
    "training",
    "version",
    "license",
    "license_url",
    "origin",
)


def _frozen_mapping(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(obj)))


def _plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(obj))


class _Fields:
    """Typed reads of one config.json object; every failure names the file and the field."""

    def __init__(self, obj: Mapping[str, Any], source: str):
        self.obj, self.source = obj, source

    def fail(self, key: str, what: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: field {key!r} {what}")

    def integer(self, key: str, minimum: int, within: str | None = None) -> int | None:
        """``obj[key]`` (or ``obj[within][key]``) as an integer >= minimum; None where absent."""
        obj = self.obj if within is None else self.obj[within]
        if key not in obj:
            return None
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            name = key if within is None else f"{within}.{key}"
            raise self.fail(name, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def string(self, key: str, optional: bool = False) -> str | None:
        if key not in self.obj or self.obj[key] is None:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.obj[key]
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def mapping(self, key: str, optional: bool = False) -> Mapping[str, Any] | None:
        if key not in self.obj or self.obj[key] is None:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.obj[key]
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a JSON object, got {type(value).__name__}")
        return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model dir's ``config.json``, validated: what rebuilds the network and what describes it.

    ``precond_kwargs`` are the preconditioner's constructor arguments as stored (an infinite sigma is the string
    ``"inf"``); ``dataset`` and ``training`` are the summaries the training code records; ``extra`` holds any other
    key of the file (e.g. ``imported_from``), kept as read and written back by ``to_json``.
    """

    kind: str  # 'generator' (one-step G) | 'denoiser' (an EDM teacher)
    precond: str  # 'edm' | 'd2o'
    precond_kwargs: Mapping[str, Any]
    img_resolution: int
    img_channels: int
    label_dim: int  # 0: unconditional
    weights: str  # file name inside the model dir
    name: str | None = None
    class_names: tuple[str, ...] = ()
    weights_sha256: str | None = None
    sigma: float | None = None  # generators: the noise level G(z) = D(sigma z; sigma) runs at
    dataset: Mapping[str, Any] | None = None
    training: Mapping[str, Any] | None = None
    version: str | None = None  # a human version ("1.2.0"); the service adds the weights' hash to it
    license: str | None = None  # SPDX identifier; see ``resolved_license`` for files that name none
    license_url: str | None = None
    origin: str | None = None  # where the weights come from (import, pre-training, fine-tune of a teacher)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for key in ("precond_kwargs", "dataset", "training", "extra"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _frozen_mapping(value))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    @classmethod
    def from_json(
        cls, obj: Any, source: str | Path = CONFIG_NAME, kinds: tuple[str, ...] = tuple(WEIGHTS_NAME)
    ) -> ModelConfig:
        """Check a parsed config.json; a CheckpointError names ``source`` and the bad field.

        A ``kind`` outside ``kinds`` raises :class:`ModelKindError` before anything else is checked.
        """
        source = str(source)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        f = _Fields(obj, source)
        kind = obj.get("kind")
        if kind == "classifier":
            why = "a classifier (training.evaluation reads it), not a generator or a denoiser"
            raise ModelKindError(f"{source}: {why}", kind)
        if not isinstance(kind, str) or kind not in kinds:
            raise ModelKindError(f"{source}: field 'kind' must be one of {list(kinds)}, got {kind!r}", kind)
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        precond = f.string("precond")
        if precond not in PRECONDS:
            raise f.fail("precond", f"must be one of {sorted(PRECONDS)}, got {precond!r}")
        kwargs = f.mapping("precond_kwargs")
        if not all(isinstance(k, str) for k in kwargs):
            raise f.fail("precond_kwargs", "must have string keys")
        # The network's shape: top-level fields (older files may hold them only in precond_kwargs); both must agree.
        shape: dict[str, int] = {}
        for key, minimum in (("img_resolution", 1), ("img_channels", 1), ("label_dim", 0)):
            top, inner = f.integer(key, minimum), f.integer(key, minimum, within="precond_kwargs")
            if top is not None and inner is not None and top != inner:
                raise f.fail(key, f"is {top} but precond_kwargs.{key} is {inner}")
            value = top if top is not None else inner
            if value is None and key != "label_dim":
                raise f.fail(key, "is missing")
            shape[key] = value or 0
        names = obj.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise f.fail("class_names", f"must be a list of strings, got {names!r}")
        if names and len(names) != shape["label_dim"]:
            raise f.fail("class_names", f"has {len(names)} names for label_dim {shape['label_dim']}")
        weights = f.string("weights")
        if Path(weights).name != weights or weights in (".", ".."):
            raise f.fail("weights", f"must be a file name inside the model dir, got {weights!r}")
        sha = f.string("weights_sha256", optional=True)
        if sha is not None and not _SHA256_RE.match(sha):
            raise f.fail("weights_sha256", f"must be 64 lowercase hex digits, got {sha!r}")
        version = f.string("version", optional=True)
        if version is not None and not _VERSION_RE.match(version):
            raise f.fail("version", f"must be 1-64 printable ASCII characters without spaces, got {version!r}")
        sigma = obj.get("sigma")
        if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0):
            raise f.fail("sigma", f"must be a positive number, got {sigma!r}")
        return cls(
            kind=kind,
            precond=precond,
            precond_kwargs=kwargs,
            weights=weights,
            name=f.string("name", optional=True),
            class_names=tuple(names),
            weights_sha256=sha,
            sigma=float(sigma) if sigma is not None else None,
            dataset=f.mapping("dataset", optional=True),
            training=f.mapping("training", optional=True),
            version=version,
            license=f.string("license", optional=True),
            license_url=f.string("license_url", optional=True),
            origin=f.string("origin", optional=True),
            extra={k: v for k, v in obj.items() if k not in _MODEL_KEYS},
            **shape,
        )

    def to_json(self) -> dict[str, Any]:
        """The config.json object: the keys ``save_model`` has always written, in its order, then the rest."""
        out: dict[str, Any] = {"format_version": self.format_version}
        if self.name is not None:
            out["name"] = self.name
        out.update(
            kind=self.kind,
            precond=self.precond,
            precond_kwargs=_plain(self.precond_kwargs),
            img_resolution=self.img_resolution,
            img_channels=self.img_channels,
            label_dim=self.label_dim,
            class_names=list(self.class_names),
            weights=self.weights,
        )
        if self.weights_sha256 is not None:
            out["weights_sha256"] = self.weights_sha256
        if self.sigma is not None:
            out["sigma"] = self.sigma
        if self.dataset is not None:
            out["dataset"] = _plain(self.dataset)
        if self.training is not None:
            out["training"] = _plain(self.training)
        for key in ("version", "license", "license_url", "origin"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(_plain(self.extra))
        return out

    @property
    def imported_from_edm(self) -> bool:
        """Whether the weights were imported from an EDM network pickle (``training.import_edm``)."""
        imported = self.extra.get("imported_from")
        return isinstance(imported, Mapping) and imported.get("format") == "edm-pickle"

    @property
    def teacher_record(self) -> Mapping[str, Any]:
        """``training.teacher``: what a fine-tune recorded about its teacher (empty where none)."""
        teacher = (self.training or {}).get("teacher")
        return teacher if isinstance(teacher, Mapping) else {}

    @property
    def resolved_license(self) -> tuple[str, str | None]:
        """(SPDX licence, URL of its terms): the file's own, else the one its origin implies.

        Files written before licences were recorded name none: an EDM import is EDM's CC-BY-NC-SA-4.0, a
        fine-tune whose recorded teacher names a licence inherits it, anything else is the project's own.
        """
        if self.license is not None:
            return self.license, self.license_url
        if self.imported_from_edm:
            return EDM_LICENSE, EDM_LICENSE_URL
        teacher_license = self.teacher_record.get("license")
        if isinstance(teacher_license, str) and teacher_license:
            url = self.teacher_record.get("license_url")
            return teacher_license, url if isinstance(url, str) else None
        return PROJECT_LICENSE, PROJECT_LICENSE_URL

    @property
    def resolved_origin(self) -> str | None:
        """The file's ``origin``, else one told from its import or training record (None when unknown)."""
        if self.origin is not None:
            return self.origin
        if self.imported_from_edm:
            file = self.extra["imported_from"].get("file")
            return f"EDM network pickle {file} (NVlabs/edm), imported by training.import_edm"
        stage = (self.training or {}).get("stage")
        if stage == "pretrain":
            return "pre-trained by onestep (training.pretrain)"
        if stage == "finetune":
            teacher = self.teacher_record
            source = teacher.get("origin") or teacher.get("model_dir") or teacher.get("path")
            return "fine-tuned by onestep (training.finetune)" + (f" from teacher: {source}" if source else "")
        return None

    @property
    def img_shape(self) -> tuple[int, int, int]:
        return (self.img_channels, self.img_resolution, self.img_resolution)

    @property
    def generator_sigma(self) -> float:
        """The noise level a generator runs at (EDM's sigma_max where the file names none)."""
        return self.sigma if self.sigma is not None else SIGMA_MAX

    @property
    def images_seen(self) -> int | None:
        """``training.images_seen``: how many images trained the weights, where recorded."""
        value = (self.training or {}).get("images_seen")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def dataset_spec(self) -> str | None:
        """``dataset.spec``: the data set the model was trained on (``fmnist``, ``cifar10:DIR``, ...)."""
        spec = (self.dataset or {}).get("spec")
        return spec if isinstance(spec, str) else None

    def build(self) -> EDMPrecond:
        """The preconditioned network these fields describe, with fresh weights."""
        return build_precond(self.precond, self.precond_kwargs)


def read_model_config(model_dir: str | Path, kinds: tuple[str, ...] = tuple(WEIGHTS_NAME)) -> ModelConfig:
    """A model dir's config.json, parsed and checked: the one place a model dir's config is read."""
    path = Path(model_dir) / CONFIG_NAME
    obj = read_json_object(path, f"a model dir holds {CONFIG_NAME} and a .safetensors file")
    return ModelConfig.from_json(obj, source=path, kinds=kinds)


# ---------------------------------------------------------------- model dirs


def save_model(
    model: OneStepGenerator | EDMPrecond,
    out_dir: str | Path,
    *,
    name: str | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + weights (safetensors). ``extra`` holds dataset/training summaries.

    ``license``, ``license_url`` and ``origin`` may be given in ``extra``; where they are not, they are recorded
    as ``ModelConfig.resolved_license`` / ``resolved_origin`` tell them (an EDM import: EDM's licence; a fine-tune:
    its teacher's; otherwise the project's).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, OneStepGenerator):
        kind, net, sigma = "generator", model.denoiser, model.sigma
    elif isinstance(model, EDMPrecond):
        kind, net, sigma = "denoiser", model, None
    else:
        raise TypeError(f"expected OneStepGenerator or EDMPrecond, got {type(model).__name__}")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    weights = out / WEIGHTS_NAME[kind]
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "kind": kind,
        "precond": precond_name(net),
        "precond_kwargs": precond_kwargs(net),
        "img_resolution": net.img_resolution,
        "img_channels": net.img_channels,
        "label_dim": net.label_dim,
        "class_names": list(class_names) if class_names else [str(i) for i in range(net.label_dim)],
        "weights": weights.name,
        "weights_sha256": file_sha256(weights),
    }
    if sigma is not None:
        config["sigma"] = sigma
    config.update(extra or {})
    checked = ModelConfig.from_json(config, source=out / CONFIG_NAME)  # what readers will see, checked now
    if checked.license is None or checked.origin is None:  # recorded explicitly from now on
        spdx, url = checked.resolved_license
        checked = dataclasses.replace(checked, license=spdx, license_url=url, origin=checked.resolved_origin)
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(checked.to_json(), indent=2) + "\n").encode())
    return out


def read_json_object(path: Path, missing_hint: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a CheckpointError naming the file and what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found ({missing_hint})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def load_state_dict_file(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"{path}: SHA-256 does not match config.json (file truncated or modified)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> OneStepGenerator | EDMPrecond:
    """Rebuild a generator or denoiser from its config alone and load its weights strictly."""
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    net = config.build()
    weights = model_dir / config.weights
    state = load_state_dict_file(weights, config.weights_sha256)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the config ({e})") from e
    model: nn.Module = OneStepGenerator(net, sigma=config.generator_sigma) if config.kind == "generator" else net
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- training state


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a training snapshot: tensors and plain containers only."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: snapshot not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable training snapshot ({type(e).__name__}: {e})") from e
