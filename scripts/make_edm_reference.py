"""Make the EDM parity test data in tests/training/data/edm_reference/ by running EDM's own code.

EDM's code is not part of this repo (CC BY-NC-SA). Check it out anywhere outside the repo and pass its root:

    git clone https://github.com/NVlabs/edm /tmp/edm
    python scripts/make_edm_reference.py --edm /tmp/edm

For each case this builds EDM's ``EDMPrecond``, replaces every parameter and buffer with seeded random values
of the form ``q * 2**-e`` (q an int8, e per tensor: a quarter of the float32 size and still exact), copies EDM's
state dict into our ``training.precond.EDMPrecond`` with no key map (strict), runs both on the same seeded inputs
and asserts they agree. It writes, per case, ``<case>.safetensors`` (int8 weights, exponents in the metadata) and
``<case>-io.safetensors`` (inputs and EDM's float32 outputs), plus ``cases.json`` (constructor arguments). These
files are numbers and constructor arguments only: EDM's code is imported from ``--edm`` and run in this process,
and none of its source is written into the repo.

The EDM-format snapshot pickle in the same folder, ``edm-snapshot-tiny.pkl``, is not made with EDM's code: a pickle
written by EDM embeds the full source of EDM's modules. It is written by the project's own generator,
tests/training/make_edm_pickle.py (our ``EDMPrecond``, a pickler that emits EDM's format, a stand-in
``module_src``), which this script runs first, before EDM is loaded; ``python -m tests.training.make_edm_pickle``
rewrites it alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.training.make_edm_pickle import write_fixture  # noqa: E402
from training.precond import EDMPrecond  # noqa: E402

BATCH = 4
SIGMAS = [0.002, 0.4, 3.0, 80.0]

# Constructor arguments for EDMPrecond (ours and EDM's take the same ones). Small: each case stays well under 1 MB.
CASES: dict[str, dict] = {
    "ddpmpp": dict(
        img_resolution=16, img_channels=3, label_dim=10, model_type="SongUNet",
        model_channels=12, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], augment_dim=9,
        embedding_type="positional", encoder_type="standard", decoder_type="standard",
        channel_mult_noise=1, resample_filter=[1, 1], dropout=0.13,
    ),
    "ncsnpp": dict(
        img_resolution=16, img_channels=3, label_dim=10, model_type="SongUNet",
        model_channels=12, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], augment_dim=9,
        embedding_type="fourier", encoder_type="residual", decoder_type="standard",
        channel_mult_noise=2, resample_filter=[1, 3, 3, 1], dropout=0.13,
    ),
    "skip": dict(
        img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet",
        model_channels=12, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[16, 4],
        embedding_type="positional", encoder_type="skip", decoder_type="skip",
        channel_mult_noise=1, resample_filter=[1, 3, 3, 1], dropout=0.1,
    ),
    # DhariwalUNet has 64 channels per head, so a multi-head ADM is large (see EXTRA); 4 heads: "unetblock4".
    "adm": dict(
        img_resolution=16, img_channels=3, label_dim=10, model_type="DhariwalUNet",
        model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], augment_dim=9, dropout=0.1,
    ),
}
EXTRA: dict[str, dict] = {
    "adm-2heads": dict(CASES["adm"], model_channels=64),  # 128 channels at 8x8
    "adm-4heads": dict(CASES["adm"], model_channels=64, channel_mult=[1, 4]),  # 256 channels at 8x8
    "ddpmpp-32px": dict(CASES["ddpmpp"], img_resolution=32, model_channels=32, channel_mult=[2, 2, 2], num_blocks=2,
                        attn_resolutions=[16]),
}
FULL_SIZE = [("cifar10-ddpmpp", 32, 10, 9), ("cifar10-ncsnpp", 32, 10, 9), ("64-ddpmpp", 64, 0, 9),
             ("imagenet64-adm", 64, 1000, 0)]
# A single ADM-style UNetBlock with 4 heads: pins the interleaved qkv layout of multi-head attention.
BLOCK4 = dict(in_channels=32, out_channels=64, emb_channels=48, attention=True, num_heads=4, dropout=0.0)


def load_edm(edm_root: Path) -> types.ModuleType:
    """Import EDM's networks.py under another name (our package is also called ``training``)."""
    sys.path.append(str(edm_root))  # for its torch_utils and dnnlib
    spec = importlib.util.spec_from_file_location("edm_networks", edm_root / "training" / "networks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["edm_networks"] = module
    spec.loader.exec_module(module)
    return module


def quantize(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``v ~= q * 2**-e`` with ``q`` int8 and the largest ``e`` that keeps ``|q| <= 127``."""
    peak = v.abs().max().item()
    e = math.floor(math.log2(127 / peak)) if peak > 0 else 0
    return (v * 2.0**e).round().clamp(-127, 127).to(torch.int8), e


@torch.no_grad()
def randomize_(net: torch.nn.Module, seed: int) -> None:
    """Replace every parameter and buffer with seeded values exact as int8 * 2**-e (EDM zero-inits some layers)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in sorted(net.state_dict(keep_vars=True).items()):
        if name.endswith("resample_filter"):
            continue  # fixed FIR filters: exact already
        if name.endswith("freqs"):
            v = torch.randn(t.shape, generator=g) * 16
        elif t.ndim >= 2:
            v = torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            v = 1 + 0.2 * torch.randn(t.shape, generator=g)
        else:
            v = 0.2 * torch.randn(t.shape, generator=g)
        q, e = quantize(v)
        t.copy_(q.float() * 2.0**-e)


def save_weights(net: torch.nn.Module, path: Path) -> None:
    tensors, exponents = {}, {}
    for name, t in net.state_dict().items():
        q, e = quantize(t)
        assert torch.equal(q.float() * 2.0**-e, t), f"{name} is not exact as int8 * 2**-e"
        tensors[name], exponents[name] = q.contiguous(), str(e)
    save_file(tensors, str(path), metadata=exponents)


def make_inputs(case: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, r = case["img_channels"], case["img_resolution"]
    io = {
        "x": torch.randn([BATCH, c, r, r], generator=g) * torch.tensor(SIGMAS).sqrt().reshape(-1, 1, 1, 1),
        "sigma": torch.tensor(SIGMAS),
    }
    if case.get("label_dim"):
        labels = torch.randint(0, case["label_dim"], [BATCH], generator=g)
        onehot = torch.nn.functional.one_hot(labels, case["label_dim"]).float()
        onehot[-1] = 0  # an unconditional row, as with label dropout
        io["class_labels"] = onehot
    if case.get("augment_dim"):
        aug = torch.randn([BATCH, case["augment_dim"]], generator=g)
        aug[0] = 0  # no augmentation
        io["augment_labels"] = aug
    return io


def run(net: torch.nn.Module, io: dict[str, torch.Tensor]) -> torch.Tensor:
    kw = {"augment_labels": io["augment_labels"]} if "augment_labels" in io else {}
    return net(io["x"], io["sigma"], io.get("class_labels"), **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", type=Path, required=True, help="root of an NVlabs/edm checkout (outside this repo)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "training" / "data" / "edm_reference")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The EDM-format snapshot pickle: our generator, before any of EDM's modules are loaded.
    snapshot = write_fixture(out / "edm-snapshot-tiny.pkl")
    print(f"wrote {snapshot.name} with tests/training/make_edm_pickle.py (no EDM code)")
    edm = load_edm(args.edm.resolve())
    torch.set_grad_enabled(False)

    cases_json = {}
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(i)
        ref = edm.EDMPrecond(**case).eval()
        randomize_(ref, seed=100 + i)
        ours = EDMPrecond(**case).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        io = make_inputs(case, seed=200 + i)
        expected = run(ref, io)
        diff = (run(ours, io) - expected).abs().max().item()
        n = sum(p.numel() for p in ref.parameters())
        print(f"{name:8s} params {n:8d}  max|ours - EDM| = {diff:.3g}  max|EDM| = {expected.abs().max():.3g}")
        assert diff < 1e-5 * max(1.0, expected.abs().max().item()), f"{name}: ours differs from EDM by {diff}"
        save_weights(ref, out / f"{name}.safetensors")
        save_file({**io, "expected": expected.contiguous()}, str(out / f"{name}-io.safetensors"))
        cases_json[name] = case

    # The 4-head UNetBlock, ADM style (adaptive scale, eps 1e-5, skip_scale 1).
    from training.networks import UNetBlock

    torch.manual_seed(9)
    ref_block = edm.UNetBlock(**BLOCK4).eval()
    randomize_(ref_block, seed=109)
    our_block = UNetBlock(**BLOCK4).eval()
    our_block.load_state_dict(ref_block.state_dict(), strict=True)
    g = torch.Generator().manual_seed(209)
    x = torch.randn([2, BLOCK4["in_channels"], 8, 8], generator=g)
    emb = torch.randn([2, BLOCK4["emb_channels"]], generator=g)
    expected = ref_block(x, emb)
    diff = (our_block(x, emb) - expected).abs().max().item()
    print(f"unetblock4 max|ours - EDM| = {diff:.3g}")
    assert diff < 1e-5 * max(1.0, expected.abs().max().item())
    save_weights(ref_block, out / "unetblock4.safetensors")
    save_file({"x": x, "emb": emb, "expected": expected.contiguous()}, str(out / "unetblock4-io.safetensors"))
    cases_json["unetblock4"] = BLOCK4
    (out / "cases.json").write_text(json.dumps(cases_json, indent=2) + "\n")

    # Larger cases checked here but not stored (their weights would not fit the test data budget).
    for i, (name, case) in enumerate(EXTRA.items()):
        torch.manual_seed(50 + i)
        ref = edm.EDMPrecond(**case).eval()
        randomize_(ref, seed=150 + i)
        ours = EDMPrecond(**case).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        io = make_inputs(case, seed=250 + i)
        expected = run(ref, io)
        diff = (run(ours, io) - expected).abs().max().item()
        n = sum(p.numel() for p in ref.parameters())
        peak = expected.abs().max()
        print(f"{name:8s} params {n:8d}  max|ours - EDM| = {diff:.3g}  max|EDM| = {peak:.3g}  (not stored)")
        assert diff < 1e-5 * max(1.0, expected.abs().max().item()), f"{name}: ours differs from EDM by {diff}"

    # Full-size named configs: EDM's state dict has exactly our keys and shapes (built on the meta device).
    from training.configs import network_config

    for name, res, label_dim, augment_dim in FULL_SIZE:
        kw = network_config(name)
        with torch.device("meta"):
            ref, ours = (cls(res, 3, label_dim, augment_dim=augment_dim, **kw) for cls in (edm.EDMPrecond, EDMPrecond))
        shapes = [{k: tuple(v.shape) for k, v in net.state_dict().items()} for net in (ref, ours)]
        n = sum(p.numel() for p in ref.parameters())
        print(f"{name:15s} EDM params {n:10d}  same keys and shapes as ours: {shapes[0] == shapes[1]}")
        assert shapes[0] == shapes[1], name

    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
