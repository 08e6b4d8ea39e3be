"""Import an EDM network pickle (``network-snapshot-*.pkl``, ``edm-*.pkl``) without running the code inside it.

EDM pickles its networks as ``torch_utils.persistence`` records: the full source of the defining module, the class
name, the module ``__dict__`` (parameters, buffers, submodules) and the exact constructor kwargs. EDM's own loader
``exec``s that source. This importer never does: a restricted unpickler resolves only the globals listed in
``ALLOWED_GLOBALS`` (each mapped to a function or stub written here) and refuses every other one by name before
anything runs. The EMA network is then rebuilt with our EDM-compatible classes from its recorded kwargs, its state
dict is loaded strictly, and a model dir is written.

Unpickling is still parsing an untrusted format: read only files whose origin you trust.

    python -m training.import_edm SNAPSHOT.pkl --out MODEL_DIR
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import EDM_LICENSE, EDM_LICENSE_URL, file_sha256, save_model
from training.networks import NETWORKS
from training.precond import EDMPrecond

SUPPORTED_PRECONDS = ("EDMPrecond",)
OTHER_EDM_PRECONDS = ("VPPrecond", "VEPrecond", "iDDPMPrecond")
PERSISTENCE_VERSION = 6


class EDMImportError(ValueError):
    """An EDM pickle that is refused, malformed, or holds a network we cannot rebuild."""


# ---------------------------------------------------------------- stand-ins for the pickle's globals


@dataclass
class PersistentRecord:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` would have rebuilt, left as data."""

    class_name: str
    state: dict[str, Any]
    module_src_sha256: str = ""


class ModuleRecord:
    """A plain torch container (ModuleDict, ...) in the pickle: only its ``__dict__`` state is kept."""

    def __init__(self, *args: Any) -> None:
        if args:
            raise pickle.UnpicklingError("unexpected constructor arguments for a torch container")
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("torch container state is not a dict")
        self.state = state


@dataclass
class NumpyDType:
    """Stand-in for ``numpy.dtype(spec, align, copy)``; only plain numeric dtypes are ever turned into values."""

    spec: str
    byteorder: str = "<"
    extra: tuple = field(default_factory=tuple)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]


_NUMERIC_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> NumpyDType:
    if not isinstance(spec, str) or spec not in _NUMERIC_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain numeric dtype")
    return NumpyDType(spec)


def _numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """``numpy.core.multiarray.scalar``: decoded to a Python number from its raw bytes."""
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar with an unexpected dtype or payload")
    order = "<" if dtype.byteorder in ("<", "|", "=") else ">"
    arr = np.frombuffer(data, dtype=np.dtype(order + dtype.spec))
    if arr.size != 1:
        raise pickle.UnpicklingError("numpy scalar payload of the wrong size")
    return arr[0].item()


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stub for EDM's ``_reconstruct_persistent_obj``: records the class name and state, never runs ``module_src``."""
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError("persistent object metadata is not a dict")
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"persistent object of type {meta.get('type')!r}, expected 'class'")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise pickle.UnpicklingError(
            f"torch_utils.persistence version {meta.get('version')!r}, expected {PERSISTENCE_VERSION}"
        )
    class_name, state, src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("persistent object without a class_name string and a state dict")
    digest = hashlib.sha256(src.encode()).hexdigest() if isinstance(src, str) else ""
    return PersistentRecord(class_name=class_name, state=dict(state), module_src_sha256=digest)


def _load_storage(data: Any) -> Any:
    """``torch.storage._load_from_bytes`` (a legacy ``torch.save`` of one storage), read with ``weights_only``."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("tensor storage payload is not bytes")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"tensor storage payload holds {type(storage).__name__}, not a storage")
    return storage


def _is_int_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(v, int) for v in x)


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``, with its arguments checked and hooks refused."""
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError("tensor without a storage")
    if not (isinstance(offset, int) and _is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError("tensor with a malformed offset, size or stride")
    if hooks:
        raise pickle.UnpicklingError("tensor with backward hooks")
    t = torch.empty((0,), dtype=storage.dtype)
    return t.set_(storage._untyped_storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, state: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the data tensor alone is kept."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without a tensor")
    if hooks or state:
        raise pickle.UnpicklingError("parameter with hooks or extra state")
    return data


def _plain_set(items: Any = ()) -> set:
    return set(items)


# Every global an EDM pickle may name, and what it resolves to here. Anything else is refused by name.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): dict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): _plain_set,  # protocol 3 pickles sets through builtins.set (EDM's files are protocol 4)
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("torch.nn.modules.container", "ModuleList"): ModuleRecord,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED_GLOBALS``; a pickle naming anything else fails at that name, before any call."""

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in an EDM pickle (refused before anything ran)"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by EDM pickles")


def restricted_load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EDMImportError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise EDMImportError(f"{path}: {e}") from e
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as e:
            raise EDMImportError(f"{path}: not a readable EDM pickle ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- records -> state dict + constructor kwargs


def _record_state(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, PersistentRecord | ModuleRecord):
        return obj.state
    raise EDMImportError(f"{where}: expected a module record, found {type(obj).__name__}")


def flatten_state_dict(record: PersistentRecord | ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """A torch ``state_dict`` from nested module records: parameters, persistent buffers, then submodules."""
    state = _record_state(record, prefix or "<root>")
    out: dict[str, torch.Tensor] = {}
    params, buffers = state.get("_parameters", {}), state.get("_buffers", {})
    modules = state.get("_modules", {})
    non_persistent = state.get("_non_persistent_buffers_set", set())
    if not all(isinstance(d, dict) for d in (params, buffers, modules)):
        raise EDMImportError(f"{prefix or '<root>'}: module state without _parameters/_buffers/_modules dicts")
    for name, t in params.items():
        if t is not None:
            out[prefix + name] = t
    for name, t in buffers.items():
        if t is not None and name not in non_persistent:
            out[prefix + name] = t
    for name, child in modules.items():
        if child is not None:
            out.update(flatten_state_dict(child, prefix + name + "."))
    for key, t in out.items():
        if not isinstance(t, torch.Tensor):
            raise EDMImportError(f"{key}: expected a tensor, found {type(t).__name__}")
    return out


def _plain(obj: Any, where: str) -> Any:
    """Constructor kwargs as plain JSON-able values (lists for tuples); anything else is refused."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise EDMImportError(f"{where}: unexpected value of type {type(obj).__name__} in the constructor arguments")


@dataclass
class ImportedNetwork:
    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any]


def parse_network(data: Any, key: str = "ema", source: str = "<pickle>") -> ImportedNetwork:
    """Pick the network at ``data[key]`` and turn its record into class name, kwargs and state dict."""
    if isinstance(data, PersistentRecord):
        record = data
    elif isinstance(data, dict):
        if key not in data:
            raise EDMImportError(f"{source}: no {key!r} entry (found {sorted(map(str, data))})")
        record = data[key]
    else:
        raise EDMImportError(f"{source}: expected a dict of networks, found {type(data).__name__}")
    if not isinstance(record, PersistentRecord):
        raise EDMImportError(f"{source}: {key!r} is {type(record).__name__}, not an EDM network record")
    if record.class_name in OTHER_EDM_PRECONDS:
        raise EDMImportError(
            f"{source}: {record.class_name} networks are not supported (only {', '.join(SUPPORTED_PRECONDS)}; "
            "EDM's released edm-*.pkl models and its --precond=edm runs use EDMPrecond)"
        )
    if record.class_name not in SUPPORTED_PRECONDS:
        raise EDMImportError(f"{source}: class {record.class_name!r} is not a supported network")
    state = record.state
    if state.get("_init_args") not in ((), [], None):
        raise EDMImportError(f"{source}: positional constructor arguments are not supported")
    init_kwargs = state.get("_init_kwargs")
    if not isinstance(init_kwargs, dict):
        raise EDMImportError(f"{source}: the network record has no _init_kwargs (constructor arguments)")
    init_kwargs = _plain(init_kwargs, "_init_kwargs")
    model_type = init_kwargs.get("model_type", "DhariwalUNet")
    if model_type not in NETWORKS:
        raise EDMImportError(f"{source}: model_type {model_type!r} is not one of {sorted(NETWORKS)}")
    inner = state.get("_modules", {}).get("model")
    if isinstance(inner, PersistentRecord) and inner.class_name != model_type:
        raise EDMImportError(f"{source}: inner network is {inner.class_name}, but model_type says {model_type}")
    extra: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("dataset_kwargs"), dict):
        with contextlib.suppress(EDMImportError):  # informational only
            extra["dataset_kwargs"] = _plain(data["dataset_kwargs"], "dataset_kwargs")
    return ImportedNetwork(record.class_name, init_kwargs, flatten_state_dict(record), extra)


def build_network(imported: ImportedNetwork, source: str = "<pickle>") -> EDMPrecond:
    kwargs = dict(imported.init_kwargs)
    kwargs.setdefault("model_type", "DhariwalUNet")  # EDM's default
    try:
        net = EDMPrecond(**kwargs)
    except TypeError as e:
        raise EDMImportError(f"{source}: constructor arguments our EDMPrecond does not take ({e})") from e
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in imported.state_dict.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EDMImportError(f"{source}: the weights do not fit the recorded architecture ({e})") from e
    return net.eval().requires_grad_(False)


def load_edm_network(path: str | Path, key: str = "ema") -> tuple[EDMPrecond, ImportedNetwork]:
    """Read an EDM pickle safely and rebuild its network with our classes (eval mode, no grad)."""
    data = restricted_load(path)
    imported = parse_network(data, key=key, source=str(path))
    return build_network(imported, source=str(path)), imported


def import_edm(
    path: str | Path,
    out_dir: str | Path,
    *,
    key: str = "ema",
    name: str | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """EDM pickle -> model dir (kind 'denoiser', precond 'edm') that fine-tuning and evaluation read."""
    path = Path(path)
    net, imported = load_edm_network(path, key=key)
    if class_names is not None and len(class_names) != net.label_dim:
        raise EDMImportError(f"{len(class_names)} class names given, but the network has label_dim {net.label_dim}")
    extra = {
        "imported_from": {
            "format": "edm-pickle",
            "file": path.name,
            "sha256": file_sha256(path),
            "key": key,
            "class_name": imported.class_name,
            **imported.extra,
        },
        # EDM's released checkpoints are CC BY-NC-SA 4.0; the model dir (and what is fine-tuned from it) keeps that.
        "license": EDM_LICENSE,
        "license_url": EDM_LICENSE_URL,
    }
    return save_model(net, out_dir, name=name, class_names=class_names, extra=extra)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m training.import_edm",
        description="Convert an EDM network pickle into a model dir without running code from the pickle. "
        "Read only files you trust all the same.",
    )
    ap.add_argument("snapshot", type=Path, help="EDM pickle: network-snapshot-*.pkl or a released edm-*.pkl")
    ap.add_argument("--out", type=Path, required=True, help="model dir to write (config.json + denoiser.safetensors)")
    ap.add_argument("--key", default="ema", help="entry of the pickled dict holding the network (default: ema)")
    ap.add_argument("--name", default=None, help="model name in config.json (default: the out dir's name)")
    ap.add_argument("--class-names", default=None, help="comma-separated class names (default: 0..label_dim-1)")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    try:
        out = import_edm(args.snapshot, args.out, key=args.key, name=args.name, class_names=names)
    except EDMImportError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
