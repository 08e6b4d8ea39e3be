"""On-disk formats: training state (torch.save of tensors, read with weights_only) and released model dirs.

A model dir is ``config.json`` + ``generator.safetensors`` (one-step generator) or ``denoiser.safetensors``
(a teacher). The weights are the preconditioner's state dict, keys ``model.*`` as in EDM. The config alone
rebuilds the module; no code is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
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


class CheckpointError(ValueError):
    """A model dir or training snapshot that is missing, truncated, tampered with or of the wrong format."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
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


# ---------------------------------------------------------------- model dirs


def save_model(
    model: OneStepGenerator | EDMPrecond,
    out_dir: str | Path,
    *,
    name: str | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + weights (safetensors). ``extra`` holds dataset/training summaries."""
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
    _atomic_write_bytes(out / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
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


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_NAME
    config = read_json_object(path, f"a model dir holds {CONFIG_NAME} and a .safetensors file")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("kind", "precond", "precond_kwargs", "weights"):
        if key not in config:
            raise CheckpointError(f"{path}: missing key {key!r}")
    if config["kind"] not in WEIGHTS_NAME:
        raise CheckpointError(f"{path}: unknown kind {config['kind']!r}")
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
    config = read_config(model_dir)
    net = build_precond(config["precond"], config["precond_kwargs"])
    state = load_state_dict_file(model_dir / config["weights"], config.get("weights_sha256"))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{model_dir / config['weights']}: weights do not fit the config ({e})") from e
    model: nn.Module = (
        OneStepGenerator(net, sigma=float(config.get("sigma", SIGMA_MAX))) if config["kind"] == "generator" else net
    )
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
