"""The EDM pickle importer: EDM's pickle format in, model dir out, and nothing in the pickle ever runs.

Every pickle here is written without EDM's code, by tests/training/make_edm_pickle.py: a pickler that emits the
opcodes EDM's persistence does (a ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` call per network
object, ``meta`` holding ``module_src``, ``class_name`` and the module state with ``_init_kwargs``), while tensors,
parameters and ModuleDicts pickle through torch's own reducers. The ``module_src`` of the pickles made in these tests
writes a sentinel file if anything runs it; the committed data/edm_reference/edm-snapshot-tiny.pkl embeds a short
stand-in source of ours (no EDM source), and is reproduced by that generator.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training import make_edm_pickle as edm_pickle
from training.checkpoint import load_model, read_model_config
from training.import_edm import (
    ALLOWED_GLOBALS,
    EDMImportError,
    PersistentRecord,
    RestrictedUnpickler,
    flatten_state_dict,
    import_edm,
    load_edm_network,
    main,
    restricted_load,
)
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
# The global names in EDM's own snapshot pickles (numpy 1 spells the scalar's module numpy.core.multiarray).
EDM_SNAPSHOT_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.storage", "_load_from_bytes"),
    ("torch.nn.modules.container", "ModuleDict"),
    ("numpy", "dtype"),
}


def edm_snapshot(net: EDMPrecond, init_kwargs: dict, module_src: str, **extra: Any) -> dict[str, Any]:
    """``dict(ema=..., loss_fn=..., augment_pipe=None, dataset_kwargs=EasyDict(...))``, EDM's snapshot layout."""
    dataset_kwargs = edm_pickle.EasyDict(
        class_name="training.dataset.ImageFolderDataset",
        path="cifar10-32x32.zip",
        use_labels=True,
        xflip=False,
        cache=True,
        resolution=16,
        max_size=50000,
    )
    data = edm_pickle.snapshot(net, init_kwargs, module_src=module_src, dataset_kwargs=dataset_kwargs)
    data.update(extra)
    return data


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "side-effect"


@pytest.fixture
def module_src(sentinel: Path) -> str:
    """A ``module_src`` that leaves a file behind if the importer ever executed it."""
    return f"open({str(sentinel)!r}, 'w').write('module_src ran')\n"


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
    labels = torch.eye(kw["label_dim"])[[1, kw["label_dim"] - 1]] if kw.get("label_dim") else None
    extra = {"augment_labels": torch.randn([2, kw["augment_dim"]], generator=g)} if kw.get("augment_dim") else {}
    return x, torch.tensor([0.3, 20.0]), labels, extra


def record_class_names(record: Any) -> list[str]:
    """Class names of the persistent records in a network record tree (torch containers have none)."""
    names = [record.class_name] if isinstance(record, PersistentRecord) else []
    for child in record.state.get("_modules", {}).values():
        if child is not None:
            names += record_class_names(child)
    return names


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every global a pickle names, read through the importer's own unpickler."""
    names: set[tuple[str, str]] = set()

    class Recording(RestrictedUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            names.add((module, name))
            return super().find_class(module, name)

    Recording(io.BytesIO(data)).load()
    return names


# ---------------------------------------------------------------- the genuine format


@pytest.mark.parametrize(("arch", "protocol"), [("ddpmpp", 4), ("ncsnpp", 4), ("adm", 4), ("ddpmpp", 3)])
def test_import_matches_network_built_directly(arch, protocol, module_src, sentinel, tmp_path) -> None:
    kw = TINY[arch]
    net = seeded_net(kw)
    pkl = tmp_path / "network-snapshot-000100.pkl"
    pkl.write_bytes(edm_pickle.dumps(edm_snapshot(net, kw, module_src), protocol=protocol))

    out = import_edm(pkl, tmp_path / "model")
    loaded = load_model(out)
    assert isinstance(loaded, EDMPrecond) and type(loaded) is EDMPrecond
    x, sigma, labels, extra = inputs(kw)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels, **extra), net(x, sigma, labels, **extra))
    config = read_model_config(out)
    assert config.kind == "denoiser" and config.precond == "edm"
    assert config.license == "CC-BY-NC-SA-4.0" and config.license_url.startswith("https://creativecommons.org/")
    assert pkl.name in config.origin  # EDM's licence, recorded with the import
    assert config.precond_kwargs["model_type"] == kw["model_type"]
    imported = config.extra["imported_from"]  # a key of its own, kept as written
    assert imported["file"] == pkl.name and imported["class_name"] == "EDMPrecond"
    assert imported["dataset_kwargs"]["resolution"] == 16
    assert ("dnnlib.util", "EasyDict") in pickle_globals(pkl.read_bytes())
    assert not sentinel.exists(), "module_src was executed"


def test_committed_snapshot(tmp_path) -> None:
    """The committed EDM-format snapshot (training-loop layout, EDMLoss and AugmentPipe records included)."""
    pkl = REF / "edm-snapshot-tiny.pkl"
    net, imported = load_edm_network(pkl)
    assert imported.init_kwargs == edm_pickle.FIXTURE_KWARGS
    assert imported.extra["dataset_kwargs"] == edm_pickle.FIXTURE_DATASET_KWARGS
    weights = edm_pickle.fixture_state_dict()
    assert imported.state_dict.keys() == weights.keys()
    assert all(torch.equal(imported.state_dict[k], v) for k, v in weights.items())
    # The imported network computes exactly what our network built directly with the same state dict does.
    direct = EDMPrecond(**edm_pickle.FIXTURE_KWARGS).eval()
    direct.load_state_dict(weights, strict=True)
    x, sigma, labels, extra = inputs(edm_pickle.FIXTURE_KWARGS)
    with torch.no_grad():
        got, want = net(x, sigma, labels, **extra), direct(x, sigma, labels, **extra)
    assert torch.equal(got, want) and want.abs().max() > 0.1
    data = restricted_load(pkl)
    assert list(data) == ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"]
    assert data["loss_fn"].class_name == "EDMLoss" and data["augment_pipe"].class_name == "AugmentPipe"
    assert data["augment_pipe"].state["_init_kwargs"] == edm_pickle.FIXTURE_AUGMENT
    assert data["ema"].state["_modules"]["model"].class_name == "SongUNet"
    assert len(data["ema"].module_src_sha256) == 64


def test_committed_snapshot_has_edm_globals_and_no_edm_source() -> None:
    raw = (REF / "edm-snapshot-tiny.pkl").read_bytes()
    assert raw[:2] == b"\x80\x04"  # protocol 4, as pickle.dump in EDM's training loop
    names = pickle_globals(raw)
    scalar = names - EDM_SNAPSHOT_GLOBALS
    assert names >= EDM_SNAPSHOT_GLOBALS
    assert scalar <= {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")} and len(scalar) == 1
    # module_src is our stand-in: a comment and class stubs, nothing of EDM's source or licence header.
    data = restricted_load(REF / "edm-snapshot-tiny.pkl")
    networks_src = edm_pickle.standin_source("networks", record_class_names(data["ema"]))
    assert data["ema"].module_src_sha256 == hashlib.sha256(networks_src.encode()).hexdigest()
    for key, module, name in [("loss_fn", "loss", "EDMLoss"), ("augment_pipe", "augment", "AugmentPipe")]:
        src = edm_pickle.standin_source(module, [name])
        assert data[key].module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
    for word in (b"NVIDIA", b"Copyright", b"import torch", b"def forward"):
        assert word not in raw, word


def test_generator_reproduces_the_committed_snapshot(tmp_path) -> None:
    """``python -m tests.training.make_edm_pickle`` rewrites the committed file; a fresh copy holds the same content.

    (Bytes can differ once our network classes change their attributes; the content the importer reads may not.)
    """
    fresh = edm_pickle.write_fixture(tmp_path / "edm-snapshot-tiny.pkl")
    committed = REF / "edm-snapshot-tiny.pkl"
    a, b = restricted_load(fresh), restricted_load(committed)
    assert list(a) == list(b) and a["dataset_kwargs"] == b["dataset_kwargs"]
    for key in ("loss_fn", "augment_pipe"):
        assert (a[key].class_name, a[key].state, a[key].module_src_sha256) == (
            b[key].class_name, b[key].state, b[key].module_src_sha256)
    assert a["ema"].state["_init_kwargs"] == b["ema"].state["_init_kwargs"]
    sa, sb = flatten_state_dict(a["ema"]), flatten_state_dict(b["ema"])
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh_net, _ = load_edm_network(fresh)
    committed_net, _ = load_edm_network(committed)
    x, sigma, labels, extra = inputs(edm_pickle.FIXTURE_KWARGS)
    with torch.no_grad():
        assert torch.equal(fresh_net(x, sigma, labels, **extra), committed_net(x, sigma, labels, **extra))


def test_the_generator_writes_the_same_bytes_twice(tmp_path) -> None:
    """Deterministic output (torch's storage keys are memory addresses; the generator fixes them)."""
    assert edm_pickle.fixture_bytes() == edm_pickle.fixture_bytes()


def test_cli_writes_a_model_dir_the_teacher_loader_reads(module_src, tmp_path, capsys) -> None:
    from training.teacher import load_teacher

    kw = TINY["ddpmpp"]
    net = seeded_net(kw, seed=3)
    pkl = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    pkl.write_bytes(edm_pickle.dumps(edm_snapshot(net, kw, module_src)))
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


def test_payload_hidden_inside_a_valid_snapshot_is_refused(module_src, sentinel, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    data = edm_snapshot(seeded_net(kw), kw, module_src)
    data["dataset_kwargs"]["path"] = Evil(sentinel)  # after the network, deep in the structure
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(edm_pickle.dumps(data))
    with pytest.raises(EDMImportError, match=r"global (os|posix)\.system is not allowed"):
        import_edm(pkl, tmp_path / "out")
    assert not sentinel.exists() and not (tmp_path / "out").exists()


class ByClass:
    """An object that pickles as a call of the global ``module.name``, as a class pickled without persistence does."""

    def __init__(self, module: str, name: str, *args: Any):
        self.reduce = (edm_pickle.standin_global(module, name), args)

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize(
    ("key", "module", "name"),
    [
        ("loss_fn", "training.loss", "EDMLoss"),  # EDM's own module, but pickled by class: unknown here
        ("augment_pipe", "training.augment", "AugmentPipe"),
        ("ema", "training.song_unet", "SongUNet"),
        ("ema", "torch_utils.persistence", "persistent_class"),
    ],
)
def test_unknown_class_inside_a_valid_snapshot_is_refused(key, module, name, module_src, sentinel, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    data = edm_snapshot(seeded_net(kw), kw, module_src)
    data[key] = ByClass(module, name)
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(edm_pickle.dumps(data))
    with pytest.raises(EDMImportError, match=rf"snap\.pkl: global {module}\.{name} is not allowed"):
        load_edm_network(pkl)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch_utils.persistence", "_src_to_module"),  # EDM's own exec path
        ("training.networks", "EDMPrecond"),  # a module pickled by class instead of persistence
        ("training.loss", "EDMLoss"),  # any other training.* name
        ("training.import_edm", "RestrictedUnpickler"),
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
def test_other_edm_preconditionings_are_not_supported(class_name, module_src, tmp_path) -> None:
    state = dict(_parameters={}, _buffers={}, _modules={}, _init_args=(), _init_kwargs=dict(img_resolution=16))
    pkl = tmp_path / "vp.pkl"
    pkl.write_bytes(edm_pickle.dumps(dict(ema=edm_pickle.Persistent(class_name, state, module_src))))
    with pytest.raises(EDMImportError, match=f"{class_name} networks are not supported"):
        load_edm_network(pkl)


def test_missing_ema_entry(tmp_path) -> None:
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(dict(net=1)))
    with pytest.raises(EDMImportError, match="no 'ema' entry"):
        load_edm_network(pkl)


def test_weights_that_do_not_fit_the_recorded_kwargs(module_src, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(edm_pickle.dumps(edm_snapshot(seeded_net(kw), dict(kw, model_channels=8), module_src)))
    with pytest.raises(EDMImportError, match="weights do not fit the recorded architecture"):
        load_edm_network(pkl)


def test_unknown_constructor_argument(module_src, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(edm_pickle.dumps(edm_snapshot(seeded_net(kw), dict(kw, fancy_option=True), module_src)))
    with pytest.raises(EDMImportError, match="constructor arguments our EDMPrecond does not take"):
        load_edm_network(pkl)


def test_truncated_pickle(module_src, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    data = edm_pickle.dumps(edm_snapshot(seeded_net(kw), kw, module_src))
    pkl = tmp_path / "cut.pkl"
    pkl.write_bytes(data[: len(data) // 2])
    with pytest.raises(EDMImportError, match="cut.pkl"):
        load_edm_network(pkl)


def test_class_names_must_match_label_dim(module_src, tmp_path) -> None:
    kw = TINY["ddpmpp"]
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(edm_pickle.dumps(edm_snapshot(seeded_net(kw), kw, module_src)))
    with pytest.raises(EDMImportError, match="3 class names given, but the network has label_dim 10"):
        import_edm(pkl, tmp_path / "out", class_names=["a", "b", "c"])
