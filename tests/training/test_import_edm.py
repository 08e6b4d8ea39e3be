"""The EDM pickle importer: genuine EDM format in, model dir out, and nothing in the pickle ever runs.

The pickles here are written without EDM's code: stand-in ``torch_utils.persistence`` / ``dnnlib.util`` modules make
``pickle`` emit the same opcodes EDM's persistence does (a ``_reconstruct_persistent_obj(meta)`` call per network
object, ``meta`` holding ``module_src``, ``class_name`` and the module state with ``_init_kwargs``), while tensors,
parameters and ModuleDicts pickle through torch's own reducers. data/edm_reference/edm-snapshot-tiny.pkl is a real
snapshot written by EDM's code (scripts/make_edm_reference.py).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_model, read_config
from training.import_edm import ALLOWED_GLOBALS, EDMImportError, import_edm, load_edm_network, main, restricted_load
from training.precond import EDMPrecond

REF = Path(__file__).parent / "data" / "edm_reference"

_SHARED = dict(img_resolution=16, img_channels=3, label_dim=10, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
_SONG = dict(_SHARED, model_type="SongUNet", model_channels=16, augment_dim=9, dropout=0.13, decoder_type="standard")
# EDM's two SongUNet variants (DDPM++ and NCSN++) and ADM, each tiny.
TINY = {
    "ddpmpp": dict(
        _SONG,
        embedding_type="positional",
        encoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    ),
    "ncsnpp": dict(
        _SONG,
        embedding_type="fourier",
        encoder_type="residual",
        channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1],
    ),
    "adm": dict(_SHARED, model_type="DhariwalUNet", model_channels=32, dropout=0.1),
}


class FakeEDMModules:
    """Stand-in ``torch_utils.persistence`` and ``dnnlib.util`` so that pickle writes EDM's global names."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sentinel: Path):
        def _reconstruct_persistent_obj(meta):  # never called: the importer must not resolve to this
            raise AssertionError("EDM's reconstruct function was called")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        persistence = types.ModuleType("torch_utils.persistence")
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        torch_utils = types.ModuleType("torch_utils")
        torch_utils.persistence = persistence
        util = types.ModuleType("dnnlib.util")
        easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
        util.EasyDict = easydict
        dnnlib = types.ModuleType("dnnlib")
        dnnlib.util = util
        for name, mod in [
            ("torch_utils", torch_utils),
            ("torch_utils.persistence", persistence),
            ("dnnlib", dnnlib),
            ("dnnlib.util", util),
        ]:
            monkeypatch.setitem(sys.modules, name, mod)
        self.reconstruct = _reconstruct_persistent_obj
        self.EasyDict = easydict
        # If the importer ever executed module_src, this file would appear.
        self.module_src = f"open({str(sentinel)!r}, 'w').write('module_src ran')\n"


class Persistent:
    """Pickles as EDM's persistent objects do: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, fake: FakeEDMModules, class_name: str, state: dict[str, Any]):
        self.reduce = (
            fake.reconstruct,
            (dict(type="class", version=6, module_src=fake.module_src, class_name=class_name, state=state),),
        )

    def __reduce__(self):
        return self.reduce


def edm_record(fake: FakeEDMModules, module: torch.nn.Module, init_kwargs: dict | None = None) -> Any:
    """EDM's pickled form of ``module``: persistent records for its own classes, torch's ModuleDict as it is."""
    state = dict(module.__dict__)
    state["_parameters"] = {
        k: None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=False)
        for k, v in module._parameters.items()
    }
    state["_buffers"] = {k: None if v is None else v.detach().clone() for k, v in module._buffers.items()}
    state["_modules"] = {k: None if v is None else edm_record(fake, v) for k, v in module._modules.items()}
    state["training"] = False
    if isinstance(module, torch.nn.ModuleDict):
        md = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
        md.__dict__.update(state)
        return md
    if "skip_scale" in state:
        state["skip_scale"] = np.float64(state["skip_scale"])  # EDM computes it with np.sqrt
    for k in ("model_kwargs", "model_type"):  # attributes of ours that EDM's EDMPrecond does not have
        state.pop(k, None)
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    return Persistent(fake, type(module).__name__, state)


def edm_snapshot(fake: FakeEDMModules, net: EDMPrecond, init_kwargs: dict, **extra: Any) -> dict[str, Any]:
    """``dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)`` as EDM's training loop pickles it."""
    loss = Persistent(fake, "EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, _init_args=(), _init_kwargs={}))
    dataset_kwargs = fake.EasyDict(
        class_name="training.dataset.ImageFolderDataset",
        path="cifar10-32x32.zip",
        use_labels=True,
        xflip=False,
        cache=True,
        resolution=16,
        max_size=50000,
    )
    data = dict(ema=edm_record(fake, net, init_kwargs), loss_fn=loss, augment_pipe=None, dataset_kwargs=dataset_kwargs)
    data.update(extra)
    return data


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "side-effect"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, sentinel: Path) -> FakeEDMModules:
    return FakeEDMModules(monkeypatch, sentinel)


def seeded_net(kw: dict, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = EDMPrecond(**kw).eval()
    with torch.no_grad():  # EDM zero-inits some layers: make every weight count
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def inputs(kw: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn([2, kw["img_channels"], kw["img_resolution"], kw["img_resolution"]], generator=g)
    labels = torch.eye(kw["label_dim"])[[1, 7]] if kw.get("label_dim") else None
    extra = {"augment_labels": torch.randn([2, kw["augment_dim"]], generator=g)} if kw.get("augment_dim") else {}
    return x, torch.tensor([0.3, 20.0]), labels, extra


# ---------------------------------------------------------------- the genuine format


@pytest.mark.parametrize(("arch", "protocol"), [("ddpmpp", 4), ("ncsnpp", 4), ("adm", 4), ("ddpmpp", 3)])
def test_import_matches_network_built_directly(arch, protocol, fake, sentinel, tmp_path) -> None:
    kw = TINY[arch]
    net = seeded_net(kw)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    pkl.write_bytes(pickle.dumps(edm_snapshot(fake, net, kw), protocol=protocol))

    out = import_edm(pkl, tmp_path / "model")
    loaded = load_model(out)
    assert isinstance(loaded, EDMPrecond) and type(loaded) is EDMPrecond
    x, sigma, labels, extra = inputs(kw)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels, **extra), net(x, sigma, labels, **extra))
    config = read_config(out)
    assert config["kind"] == "denoiser" and config["precond"] == "edm"
    assert config["precond_kwargs"]["model_type"] == kw["model_type"]
    assert config["imported_from"]["file"] == pkl.name and config["imported_from"]["class_name"] == "EDMPrecond"
    assert config["imported_from"]["dataset_kwargs"]["resolution"] == 16
    assert not sentinel.exists(), "module_src was executed"


def test_genuine_edm_snapshot(tmp_path) -> None:
    """A pickle written by EDM's own code (training loop layout, EDMLoss and AugmentPipe included)."""
    pkl = REF / "edm-snapshot-tiny.pkl"
    net, imported = load_edm_network(pkl)
    assert imported.init_kwargs == json.loads((REF / "cases.json").read_text())["ddpmpp"]
    io = load_file(str(REF / "ddpmpp-io.safetensors"))
    with torch.no_grad():
        got = net(io["x"], io["sigma"], io["class_labels"], augment_labels=io["augment_labels"])
    assert (got - io["expected"]).abs().max() <= 1e-5
    data = restricted_load(pkl)
    assert data["loss_fn"].class_name == "EDMLoss" and data["augment_pipe"].class_name == "AugmentPipe"
    assert len(data["ema"].module_src_sha256) == 64


def test_cli_writes_a_model_dir_the_teacher_loader_reads(fake, tmp_path, capsys) -> None:
    from training.teacher import load_teacher

    kw = TINY["ddpmpp"]
    net = seeded_net(kw, seed=3)
    pkl = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    pkl.write_bytes(pickle.dumps(edm_snapshot(fake, net, kw)))
    names = ",".join(f"c{i}" for i in range(10))
    main([str(pkl), "--out", str(tmp_path / "teacher"), "--class-names", names])
    assert "wrote" in capsys.readouterr().out
    teacher = load_teacher(tmp_path / "teacher")
    assert teacher.class_names == names.split(",")
    x, sigma, labels, extra = inputs(kw)
    with torch.no_grad():
        assert torch.equal(teacher.net(x, sigma, labels, **extra), net(x, sigma, labels, **extra))


def test_cli_reports_errors_without_a_traceback(tmp_path) -> None:
    with pytest.raises(SystemExit, match="error: .*missing.pkl: file not found"):
        main([str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "out")])


# ---------------------------------------------------------------- refused content


def raw_call(module: str, name: str, arg: str) -> bytes:
    """A protocol-0 pickle calling ``module.name(arg)``: the classic payload."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen")],
)
def test_callable_globals_are_refused_before_anything_runs(module, name, sentinel, tmp_path) -> None:
    if name == "Popen":
        payload = f"c{module}\n{name}\n((V/usr/bin/touch\nV{sentinel}\nltR.".encode()  # Popen(["touch", path])
    elif module in ("os", "posix"):
        payload = raw_call(module, name, f"touch {sentinel}")
    else:
        payload = raw_call(module, name, f"open({str(sentinel)!r}, 'w').write('x')")
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(payload)
    with pytest.raises(EDMImportError, match=rf"evil\.pkl: global {module}\.{name} is not allowed"):
        restricted_load(pkl)
    assert not sentinel.exists()


def test_the_payload_is_live_under_plain_pickle(sentinel) -> None:
    """Control: the same bytes do run under an unrestricted unpickler, so the test above has teeth."""
    pickle.loads(raw_call("os", "system", f"touch {sentinel}"))  # noqa: S301 - our own bytes, a harmless touch
    assert sentinel.exists()


class Evil:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_payload_hidden_inside_a_valid_snapshot_is_refused(fake, sentinel, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    data = edm_snapshot(fake, seeded_net(kw), kw)
    data["dataset_kwargs"]["path"] = Evil(sentinel)  # after the network, deep in the structure
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(pickle.dumps(data))
    with pytest.raises(EDMImportError, match=r"global (os|posix)\.system is not allowed"):
        import_edm(pkl, tmp_path / "out")
    assert not sentinel.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch_utils.persistence", "_src_to_module"),  # EDM's own exec path
        ("training.networks", "EDMPrecond"),  # a module pickled by class instead of persistence
        ("torch", "load"),
        ("builtins", "getattr"),
        ("numpy", "load"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("dnnlib.util", "call_func_by_name"),
    ],
)
def test_any_other_global_is_refused_by_name(module, name, tmp_path) -> None:
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(f"c{module}\n{name}\n)R.".encode())
    with pytest.raises(EDMImportError, match=rf"global {module}\.{name} is not allowed"):
        restricted_load(pkl)


def test_allowlist_is_explicit_and_small() -> None:
    modules = {m for m, _ in ALLOWED_GLOBALS}
    assert modules <= {
        "torch_utils.persistence",
        "dnnlib.util",
        "collections",
        "builtins",
        "torch._utils",
        "torch.storage",
        "torch.nn.modules.container",
        "numpy",
        "numpy.core.multiarray",
        "numpy._core.multiarray",
    }
    assert [k for k in ALLOWED_GLOBALS if k[0] == "builtins"] == [("builtins", "set")]


def test_storage_payload_is_read_with_weights_only(tmp_path, sentinel) -> None:
    """A tensor storage whose inner torch.save blob smuggles a callable is refused by torch's weights_only loader."""
    inner = pickle.dumps(Evil(sentinel), protocol=2)
    payload = b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00C" + bytes([len(inner)]) + inner + b"\x85R."
    pkl = tmp_path / "storage.pkl"
    pkl.write_bytes(payload)
    with pytest.raises(EDMImportError):
        restricted_load(pkl)
    assert not sentinel.exists()


def test_persistent_ids_are_refused(tmp_path) -> None:
    pkl = tmp_path / "pid.pkl"
    pkl.write_bytes(b"Pfoo\n.")
    with pytest.raises(EDMImportError, match="persistent ids"):
        restricted_load(pkl)


# ---------------------------------------------------------------- well-formed but unsupported or inconsistent


@pytest.mark.parametrize("class_name", ["VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_other_edm_preconditionings_are_not_supported(class_name, fake, tmp_path) -> None:
    state = dict(_parameters={}, _buffers={}, _modules={}, _init_args=(), _init_kwargs=dict(img_resolution=16))
    pkl = tmp_path / "vp.pkl"
    pkl.write_bytes(pickle.dumps(dict(ema=Persistent(fake, class_name, state))))
    with pytest.raises(EDMImportError, match=f"{class_name} networks are not supported"):
        load_edm_network(pkl)


def test_missing_ema_entry(fake, tmp_path) -> None:
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(dict(net=1)))
    with pytest.raises(EDMImportError, match="no 'ema' entry"):
        load_edm_network(pkl)


def test_weights_that_do_not_fit_the_recorded_kwargs(fake, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(edm_snapshot(fake, seeded_net(kw), dict(kw, model_channels=8))))
    with pytest.raises(EDMImportError, match="weights do not fit the recorded architecture"):
        load_edm_network(pkl)


def test_unknown_constructor_argument(fake, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(edm_snapshot(fake, seeded_net(kw), dict(kw, fancy_option=True))))
    with pytest.raises(EDMImportError, match="constructor arguments our EDMPrecond does not take"):
        load_edm_network(pkl)


def test_truncated_pickle(fake, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    data = pickle.dumps(edm_snapshot(fake, seeded_net(kw), kw))
    pkl = tmp_path / "cut.pkl"
    pkl.write_bytes(data[: len(data) // 2])
    with pytest.raises(EDMImportError, match="cut.pkl"):
        load_edm_network(pkl)


def test_class_names_must_match_label_dim(fake, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(edm_snapshot(fake, seeded_net(kw), kw)))
    with pytest.raises(EDMImportError, match="3 class names given, but the network has label_dim 10"):
        import_edm(pkl, tmp_path / "out", class_names=["a", "b", "c"])
