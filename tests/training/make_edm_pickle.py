"""Write EDM-format network pickles (``network-snapshot-*.pkl`` layout) without EDM's code.

EDM pickles every network object through its ``torch_utils.persistence``: the object becomes a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=<source of the defining module>, class_name=..., state=...)``,
``state`` being the module ``__dict__`` (``_parameters``, ``_buffers``, ``_non_persistent_buffers_set``,
``_modules``, torch's hook dicts, the attributes) plus ``_init_args`` / ``_init_kwargs``, the constructor arguments.
Tensors, parameters and torch containers (``ModuleDict``) pickle through torch's own reducers; a training snapshot
is ``dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=dict(...))``.

This module writes that format from our own ``training.precond.EDMPrecond``: a ``pickle.Pickler`` whose
``reducer_override`` turns :class:`Persistent` records into the ``_reconstruct_persistent_obj(meta)`` call and tensor
storages into ``torch.storage._load_from_bytes(...)`` (torch's own reduction, with a fixed storage key so that the
bytes are reproducible). The callables it names (``torch_utils.persistence._reconstruct_persistent_obj``,
``dnnlib.util.EasyDict``) are name-only stand-ins defined here, made visible under those module names only while a
pickle is being written. ``module_src`` holds a short stand-in source written by this project (a comment and empty
class stubs), never EDM's: the importer records a hash of it and never runs it.

The committed fixture ``data/edm_reference/edm-snapshot-tiny.pkl`` is written by::

    python -m tests.training.make_edm_pickle            # rewrite it
    python -m tests.training.make_edm_pickle --check    # byte-compare a fresh copy with the committed one
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import pickle
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.precond import EDMPrecond

PERSISTENCE_VERSION = 6
FIXTURE = Path(__file__).parent / "data" / "edm_reference" / "edm-snapshot-tiny.pkl"

# The committed snapshot: a tiny DDPM++-style network (SongUNet) with class labels, augment labels, attention,
# down/upsampling and channel changes, so that every record kind of a real snapshot occurs in it.
FIXTURE_KWARGS: dict[str, Any] = dict(
    img_resolution=8, img_channels=3, label_dim=4, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
    num_blocks=1, attn_resolutions=[4], augment_dim=9, embedding_type="positional", encoder_type="standard",
    decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], dropout=0.13,
)
FIXTURE_SEED = 2026
FIXTURE_DATASET_KWARGS: dict[str, Any] = dict(
    class_name="training.dataset.ImageFolderDataset", path="datasets/tiny-8x8.zip", use_labels=True, xflip=False,
    cache=True, resolution=8, max_size=1000,
)
# EDM's default loss hyperparameters (the EDM paper, Table 1) and an augmentation setting as in its CIFAR-10 runs.
FIXTURE_LOSS = dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
FIXTURE_AUGMENT = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

# Attributes our classes have and EDM's do not: left out of the records.
OURS_ONLY = {"EDMPrecond": ("model_type", "model_kwargs")}
# EDM computes these with np.sqrt, so its pickles hold numpy scalars for them.
NUMPY_FLOAT_ATTRS = ("skip_scale",)


# ---------------------------------------------------------------- EDM's global names, as name-only stand-ins


def _standin_callable(module: str, name: str) -> Callable[..., Any]:
    def standin(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{module}.{name} is a name-only stand-in for writing pickles; it never runs")

    standin.__module__, standin.__name__, standin.__qualname__ = module, name, name
    return standin


_reconstruct_persistent_obj = _standin_callable("torch_utils.persistence", "_reconstruct_persistent_obj")
EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util", "__qualname__": "EasyDict",
                                      "__doc__": "Stand-in for dnnlib.util.EasyDict: pickles under that name."})
_STANDINS: dict[str, dict[str, Any]] = {
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "dnnlib.util": {"EasyDict": EasyDict},
}


def standin_global(module: str, name: str) -> Callable[..., Any]:
    """A callable that pickles as the global ``module.name`` (for tests of what the importer refuses).

    ``module`` must not name a module that is imported here (``training.networks``, say): pickle would find that one.
    """
    if module not in _STANDINS and module in sys.modules:
        raise ValueError(f"{module} is a real module here; pick a module name that is not imported")
    names = _STANDINS.setdefault(module, {})
    if name not in names:
        names[name] = _standin_callable(module, name)
    return names[name]


@contextlib.contextmanager
def _standin_modules() -> Iterator[None]:
    """Make the stand-ins importable under EDM's module names while pickling (pickle checks that names resolve)."""
    mods: dict[str, types.ModuleType] = {}
    for module, names in _STANDINS.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for name, obj in names.items():
            setattr(mods[module], name, obj)
    for full, mod in mods.items():
        if "." in full:
            parent, _, child = full.rpartition(".")
            setattr(mods[parent], child, mod)
    saved = {name: sys.modules.get(name) for name in mods}
    # The stand-in modules go in (over EDM's own, should those be imported; restored afterwards); their parent
    # packages only where missing, so that a real package of the same name (our own ``training``) keeps its place.
    added = [name for name in mods if name not in sys.modules or name in _STANDINS]
    try:
        for name in added:
            sys.modules[name] = mods[name]
        yield
    finally:
        for name in added:
            if saved[name] is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved[name]


# ---------------------------------------------------------------- records and the pickler


class Persistent:
    """An object as EDM's persistence pickles it: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str, version: int = PERSISTENCE_VERSION):
        self.meta = dict(type="class", version=version, module_src=module_src, class_name=class_name, state=state)


def standin_source(module: str, class_names: list[str]) -> str:
    """The ``module_src`` we embed: a comment and empty class stubs, written for these fixtures."""
    lines = [
        f"# Stand-in for EDM's training/{module}.py, written by the onestep project for its test fixtures.",
        "# EDM embeds the full source of the defining module here and runs it when loading; this is not that",
        "# source, and onestep's importer (training/import_edm.py) never runs module_src: it only hashes it.",
    ]
    for name in sorted(set(class_names)):
        lines += ["", "", f"class {name}:", "    pass"]
    return "\n".join(lines) + "\n"


def _legacy_storage_bytes(storage: torch.TypedStorage) -> bytes:
    """``torch.save(storage, _use_new_zipfile_serialization=False)``, as torch pickles a storage, with key '0'.

    torch names the storage by its memory address; that key is replaced so that the same weights give the same bytes.
    """
    buf = io.BytesIO()
    torch.save(storage, buf, _use_new_zipfile_serialization=False)
    blob = buf.getvalue()
    data_len = 8 + storage._untyped_storage.nbytes()  # the raw data at the end: element count, then the bytes
    head, tail = blob[:-data_len], blob[-data_len:]
    key = str(storage._untyped_storage._cdata).encode()
    old = b"X" + len(key).to_bytes(4, "little") + key  # protocol-2 BINUNICODE of the key
    if head.count(old) != 2:  # once in the persistent id, once in the list of keys
        raise RuntimeError("unexpected layout of torch's legacy storage format")
    return head.replace(old, b"X" + (1).to_bytes(4, "little") + b"0") + tail


class EDMPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Persistent):
            return _reconstruct_persistent_obj, (obj.meta,)
        if isinstance(obj, torch.TypedStorage):
            return torch.storage._load_from_bytes, (_legacy_storage_bytes(obj),)
        return NotImplemented


def dumps(obj: Any, protocol: int = 4) -> bytes:
    """Pickle ``obj`` as EDM would (protocol 4, as ``pickle.dump`` in EDM's training loop)."""
    buf = io.BytesIO()
    with _standin_modules():
        EDMPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _is_plain(v: Any) -> bool:
    if v is None or isinstance(v, bool | int | float | str | np.generic):
        return True
    if isinstance(v, list | tuple | set):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return False


def network_class_names(module: torch.nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if not type(m).__module__.startswith("torch.")]


def network_record(
    module: torch.nn.Module, *, module_src: str | None = None, init_kwargs: dict | None = None
) -> Any:
    """EDM's pickled form of ``module`` (eval mode, no grad): persistent records for the network classes, torch's
    containers as they are. ``init_kwargs`` overrides the root's recorded constructor arguments (submodules keep what
    :func:`recording_init_args` recorded, or none)."""
    if module_src is None:
        module_src = standin_source("networks", network_class_names(module))
    return _record(module, module_src, init_kwargs)


def _record(module: torch.nn.Module, module_src: str, init_kwargs: dict | None) -> Any:
    cls = type(module)
    skip = set(OURS_ONLY.get(cls.__name__, ())) | {"_compiled_call_impl", "_init_args", "_init_kwargs"}
    state: dict[str, Any] = {}
    for k, v in module.__dict__.items():
        if k in skip:
            continue
        if k == "_parameters":
            v = {n: None if p is None else torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                 for n, p in v.items()}
        elif k == "_buffers":
            v = {n: None if b is None else b.detach().clone() for n, b in v.items()}
        elif k == "_modules":
            v = {n: None if m is None else _record(m, module_src, None) for n, m in v.items()}
        elif k == "training":
            v = False
        elif not _is_plain(v):
            continue
        elif k in NUMPY_FLOAT_ATTRS and isinstance(v, float):
            v = np.float64(v)
        state[k] = copy.copy(v) if isinstance(v, dict | set | list) else v
    if cls.__module__.startswith("torch.nn."):  # ModuleDict & co. pickle by class, with their __dict__ as state
        container = cls.__new__(cls)
        container.__dict__.update(state)
        return container
    args = module.__dict__.get("_init_args", ())
    kwargs = dict(init_kwargs) if init_kwargs is not None else module.__dict__.get("_init_kwargs", {})
    if not (_is_plain(args) and _is_plain(kwargs)):
        raise TypeError(f"{cls.__name__}: constructor arguments that are not plain values")
    state["_init_args"] = tuple(args)
    state["_init_kwargs"] = copy.deepcopy(kwargs)
    return Persistent(cls.__name__, state, module_src)


def _own_classes(net: torch.nn.Module) -> list[type]:
    """The non-torch module classes in ``net`` and their non-torch bases, in a stable order."""
    found: dict[str, type] = {}
    for m in net.modules():
        for c in type(m).__mro__:
            if issubclass(c, torch.nn.Module) and not c.__module__.startswith("torch."):
                found.setdefault(f"{c.__module__}.{c.__qualname__}", c)
    return [found[k] for k in sorted(found)]


@contextlib.contextmanager
def recording_init_args(classes: list[type]) -> Iterator[None]:
    """While active, ``classes`` record their constructor arguments as ``_init_args``/``_init_kwargs`` (what EDM's
    persistence decorator records), the outermost constructor's last."""
    patched: list[tuple[type, Callable[..., None]]] = []

    def wrap(init: Callable[..., None]) -> Callable[..., None]:
        def __init__(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:  # noqa: N807
            init(self, *args, **kwargs)
            self.__dict__["_init_args"] = copy.deepcopy(args)
            self.__dict__["_init_kwargs"] = copy.deepcopy(kwargs)

        return __init__

    try:
        for cls in classes:
            if "__init__" in vars(cls):
                patched.append((cls, vars(cls)["__init__"]))
                cls.__init__ = wrap(vars(cls)["__init__"])
        yield
    finally:
        for cls, init in reversed(patched):
            cls.__init__ = init


def snapshot(
    net: torch.nn.Module, init_kwargs: dict, *, module_src: str | None = None,
    dataset_kwargs: dict | None = None, loss: dict | None = None, augment: dict | None = None,
) -> dict[str, Any]:
    """``dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)`` as EDM's training loop pickles it.

    ``augment=None`` gives ``augment_pipe=None`` (a run without augmentation). ``dataset_kwargs`` is kept as given:
    EDM's training loop stores a plain dict; pass an :data:`EasyDict` to get ``dnnlib.util.EasyDict``.
    """
    loss = dict(FIXTURE_LOSS if loss is None else loss)
    loss_rec = Persistent("EDMLoss", dict(loss, _init_args=(), _init_kwargs={}), standin_source("loss", ["EDMLoss"]))
    augment_rec = None
    if augment is not None:
        attrs = {k: float(v) for k, v in augment.items()}
        augment_rec = Persistent("AugmentPipe", dict(attrs, _init_args=(), _init_kwargs=dict(augment)),
                                 standin_source("augment", ["AugmentPipe"]))
    return dict(
        ema=network_record(net, module_src=module_src, init_kwargs=init_kwargs),
        loss_fn=loss_rec,
        augment_pipe=augment_rec,
        dataset_kwargs=dict(FIXTURE_DATASET_KWARGS) if dataset_kwargs is None else dataset_kwargs,
    )


# ---------------------------------------------------------------- the committed fixture


@torch.no_grad()
def fixture_state_dict(kwargs: dict | None = None, seed: int = FIXTURE_SEED) -> dict[str, torch.Tensor]:
    """Seeded weights for every key of ``EDMPrecond(**kwargs)``, independent of how our networks initialise.

    Fixed FIR filters (``resample_filter``) keep the values the network builds; every other tensor is random, so that
    each weight counts in the outputs (EDM zero-initialises some layers).
    """
    kwargs = FIXTURE_KWARGS if kwargs is None else kwargs
    built = EDMPrecond(**kwargs).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(built):
        t = built[name]
        if name.endswith("resample_filter"):
            out[name] = t.clone()
        elif t.ndim >= 2:
            out[name] = torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.2 * torch.randn(t.shape, generator=g)
        else:
            out[name] = 0.2 * torch.randn(t.shape, generator=g)
    return {name: out[name] for name in built}  # the network's own key order


def fixture_network() -> EDMPrecond:
    """``EDMPrecond(**FIXTURE_KWARGS)`` with :func:`fixture_state_dict`, constructor arguments recorded."""
    with recording_init_args(_own_classes(EDMPrecond(**copy.deepcopy(FIXTURE_KWARGS)))):
        net = EDMPrecond(**copy.deepcopy(FIXTURE_KWARGS))
    net.load_state_dict(fixture_state_dict(), strict=True)
    return net.eval().requires_grad_(False)


def fixture_bytes() -> bytes:
    data = snapshot(fixture_network(), FIXTURE_KWARGS, augment=FIXTURE_AUGMENT)
    return dumps(data, protocol=4)


def write_fixture(path: str | Path = FIXTURE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fixture_bytes())
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURE, help="where to write (default: the committed fixture)")
    ap.add_argument("--check", action="store_true", help="compare a fresh copy with --out instead of writing it")
    args = ap.parse_args(argv)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == fixture_bytes()
        print(f"{args.out}: {'identical to' if same else 'DIFFERS from'} a fresh copy")
        raise SystemExit(0 if same else 1)
    path = write_fixture(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")


if __name__ == "__main__":
    main()
