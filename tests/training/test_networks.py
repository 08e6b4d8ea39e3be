"""Our U-Nets against EDM's own outputs, plus shapes and sizes of every named config.

The reference data in data/edm_reference/ comes from EDM's code (scripts/make_edm_reference.py, run against an
NVlabs/edm checkout outside this repo): EDM's state dict (exact int8 * 2**-e values), seeded inputs including class
and augment labels, and EDM's float32 outputs. The state dicts load here with no key map.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from training.configs import NETWORK_CONFIGS, network_config
from training.networks import NETWORKS, UNetBlock
from training.precond import EDMPrecond, count_parameters

REF = Path(__file__).parent / "data" / "edm_reference"
CASES = json.loads((REF / "cases.json").read_text())
NET_CASES = [name for name in CASES if name != "unetblock4"]


def load_reference_weights(name: str) -> dict[str, torch.Tensor]:
    with safe_open(str(REF / f"{name}.safetensors"), "pt") as f:
        exponents = f.metadata()
        return {k: f.get_tensor(k).float() * 2.0 ** -int(exponents[k]) for k in f.keys()}  # noqa: SIM118


def load_io(name: str) -> dict[str, torch.Tensor]:
    with safe_open(str(REF / f"{name}-io.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def assert_close_to_edm(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape and got.dtype == torch.float32
    scale = max(1.0, expected.abs().max().item())
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5 * scale, f"max |ours - EDM| = {diff:.3g}"


@pytest.mark.parametrize("name", NET_CASES)
@torch.no_grad()
def test_matches_edm_outputs(name: str) -> None:
    net = EDMPrecond(**CASES[name]).eval()
    net.load_state_dict(load_reference_weights(name), strict=True)
    io = load_io(name)
    kw = {"augment_labels": io["augment_labels"]} if "augment_labels" in io else {}
    got = net(io["x"], io["sigma"], io.get("class_labels"), **kw)
    assert_close_to_edm(got, io["expected"])


def test_reference_cases_cover_the_variants() -> None:
    kinds = {(c["model_type"], c.get("embedding_type"), c.get("encoder_type"), c.get("decoder_type")) for c in
             (CASES[n] for n in NET_CASES)}
    assert ("SongUNet", "positional", "standard", "standard") in kinds  # DDPM++
    assert ("SongUNet", "fourier", "residual", "standard") in kinds  # NCSN++
    assert ("SongUNet", "positional", "skip", "skip") in kinds
    assert any(k[0] == "DhariwalUNet" for k in kinds)
    io = load_io("ddpmpp")
    assert io["class_labels"].shape == (4, 10) and io["augment_labels"].shape == (4, 9)
    assert io["augment_labels"][1:].abs().sum() > 0  # augment labels do reach the network


@torch.no_grad()
def test_unetblock_four_heads_matches_edm() -> None:
    kw = CASES["unetblock4"]
    block = UNetBlock(**kw).eval()
    state = load_reference_weights("unetblock4")
    block.load_state_dict(state, strict=True)
    assert block.num_heads == 4
    io = load_io("unetblock4")
    assert_close_to_edm(block(io["x"], io["emb"]), io["expected"])

    # The same weights read as [Q; K; V] blocks instead of EDM's interleaved layout must be caught.
    c = kw["out_channels"]
    w = state["qkv.weight"].reshape(4, c // 4, 3, c).transpose(0, 2).reshape(3 * c, c, 1, 1)
    b = state["qkv.bias"].reshape(4, c // 4, 3).transpose(0, 2).reshape(3 * c)
    block.load_state_dict({**state, "qkv.weight": w, "qkv.bias": b})
    assert (block(io["x"], io["emb"]) - io["expected"]).abs().max() > 1e-3


# ---------------------------------------------------------------- named configs

SHAPE_CASES = {  # name -> (resolution, channels, label_dim, augment_dim)
    "tiny": (16, 1, 10, 0),
    "fmnist": (28, 1, 10, 0),
    "cifar10-ddpmpp": (32, 3, 10, 9),
    "cifar10-ncsnpp": (32, 3, 10, 9),
    "64-ddpmpp": (64, 3, 0, 9),
}


def test_every_named_config_has_a_shape_case() -> None:
    assert set(NETWORK_CONFIGS) == set(SHAPE_CASES) | {"imagenet64-adm"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPE_CASES))
@torch.no_grad()
def test_named_config_output_shape(name: str) -> None:
    res, ch, label_dim, augment_dim = SHAPE_CASES[name]
    torch.manual_seed(0)
    net = EDMPrecond(res, ch, label_dim, augment_dim=augment_dim, **network_config(name)).eval()
    x = torch.randn(1, ch, res, res)
    labels = torch.eye(label_dim)[:1] if label_dim else None
    kw = {"augment_labels": torch.zeros(1, augment_dim)} if augment_dim else {}
    y = net(x, torch.tensor([1.0]), labels, **kw)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()


def meta_params(name: str, res: int, label_dim: int, augment_dim: int) -> int:
    with torch.device("meta"):  # sizes without allocating weights
        return count_parameters(EDMPrecond(res, 3, label_dim, augment_dim=augment_dim, **network_config(name)))


# Parameter counts of EDM's own networks for these configs (scripts/make_edm_reference.py checks that EDM's full-size
# state dicts have exactly our keys and shapes). EDM publishes 55.73M, 56.40M and 295.9M for its CIFAR-10 and
# ImageNet-64 models.
EDM_PARAMS = {
    ("cifar10-ddpmpp", 32, 10, 9): 55_735_299,
    ("cifar10-ncsnpp", 32, 10, 9): 56_400_643,
    ("64-ddpmpp", 64, 0, 9): 61_805_571,
    ("imagenet64-adm", 64, 1000, 0): 295_899_267,
}


@pytest.mark.parametrize("key", list(EDM_PARAMS))
def test_parameter_counts_match_edm(key: tuple) -> None:
    n = meta_params(*key)
    assert n == EDM_PARAMS[key]
    published = {"cifar10-ddpmpp": 55.73, "cifar10-ncsnpp": 56.40, "imagenet64-adm": 295.90}.get(key[0])
    if published is not None:
        assert abs(n / 1e6 - published) < 0.01


@pytest.mark.slow
def test_adm_named_config_runs_at_small_width() -> None:
    """imagenet64-adm's layout (4 levels, attention at 32/16/8, ADM heads) with fewer channels: its forward."""
    kw = network_config("imagenet64-adm")
    kw.update(model_channels=64, num_blocks=1)
    torch.manual_seed(0)
    net = EDMPrecond(32, 3, 5, **kw).eval()
    heads = {b.num_heads for b in net.model.enc.values() if isinstance(b, UNetBlock)}
    assert heads == {0, 1, 2, 3}  # 64, 128, 192 channels at 32/16/8 px, 64 per head; none at 4 px or in downsamplers
    with torch.no_grad():
        y = net(torch.randn(1, 3, 32, 32), torch.tensor([2.0]), torch.eye(5)[:1])
    assert y.shape == (1, 3, 32, 32)


def test_model_types_registered() -> None:
    assert set(NETWORKS) == {"SongUNet", "DhariwalUNet"}
