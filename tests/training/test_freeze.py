"""D2O-F freeze rule: which names it freezes, the frozen fraction on the paper's CIFAR-10 network, and the
encoder-only, decoder-only and wider (d2o-f-plus) modes."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_denoiser
from training.configs import network_config
from training.freeze import apply_freeze, frozen_names, is_frozen_d2o_f
from training.precond import D2OPrecond


def meta_network(config: str, res: int) -> D2OPrecond:
    """A class-conditional D2OPrecond of ``config`` on the meta device: shapes and names only, no memory or init."""
    kw = network_config(config)
    model_type = kw.pop("model_type")
    channels = 1 if config == "fmnist" else 3
    with torch.device("meta"):
        return D2OPrecond(img_resolution=res, img_channels=channels, label_dim=10, model_type=model_type, **kw)


@pytest.mark.parametrize(
    "name, frozen",
    [
        ("model.enc.32x32_block0.conv0.weight", True),
        ("model.enc.32x32_block0.conv1.bias", True),
        ("model.enc.16x16_down.conv0.weight", True),
        ("model.dec.16x16_up.conv1.weight", True),
        ("model.dec.8x8_in0.conv0.weight", True),
        ("model.enc.16x16_block3.proj.weight", True),
        ("model.enc.16x16_block3.qkv.weight", False),
        ("model.enc.16x16_block0.skip.weight", False),
        ("model.enc.16x16_block0.affine.weight", False),
        ("model.enc.16x16_block0.norm0.weight", False),
        ("model.enc.32x32_conv.weight", False),
        ("model.enc.16x16_aux_residual.weight", False),
        ("model.dec.32x32_aux_conv.weight", False),
        ("model.out_conv.weight", False),
        ("model.map_layer0.weight", False),
        ("model.map_label.weight", False),
    ],
)
def test_rule_on_edm_names(name: str, frozen: bool):
    assert is_frozen_d2o_f(name) is frozen


def test_cifar10_ncsnpp_fraction_matches_paper():
    """The paper reports about 84% of NCSN++'s CIFAR-10 parameters frozen; we measure 84.40% of 56.4M."""
    net = meta_network("cifar10-ncsnpp", 32)  # 56M parameters without the memory or the init time
    report = apply_freeze(net, "d2o-f")
    assert 56.3e6 < report.total_params < 56.5e6
    assert abs(report.fraction - 0.84) < 0.01
    assert all(not p.requires_grad for n, p in net.named_parameters() if n in set(frozen_names(net, "d2o-f")))
    assert report.as_dict()["frozen_fraction"] == round(report.fraction, 6)


def test_none_trains_everything_and_modes_are_checked():
    net = tiny_denoiser(precond=D2OPrecond)
    apply_freeze(net, "d2o-f")
    report = apply_freeze(net, "none")
    assert report.frozen_params == 0 and all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="freeze mode"):
        apply_freeze(net, "all")


@pytest.mark.parametrize(
    "name, encoder, decoder",
    [
        ("model.enc.32x32_block0.conv0.weight", True, False),
        ("model.enc.16x16_block3.proj.weight", True, False),
        ("model.dec.16x16_up.conv1.weight", False, True),
        ("model.dec.8x8_in0.conv0.weight", False, True),
        ("model.dec.16x16_block0.skip.weight", False, False),
        ("model.enc.32x32_conv.weight", False, False),
        ("model.out_conv.weight", False, False),
    ],
)
def test_partial_modes_apply_the_rule_in_one_half(name: str, encoder: bool, decoder: bool):
    class OneParameter(torch.nn.Module):  # a parameter under exactly this dotted name
        def named_parameters(self, *args, **kwargs):  # type: ignore[override]
            yield name, torch.nn.Parameter(torch.zeros(1))

    assert (name in frozen_names(OneParameter(), "d2o-f-encoder")) is encoder
    assert (name in frozen_names(OneParameter(), "d2o-f-decoder")) is decoder


@pytest.mark.parametrize(
    "config, res, encoder, decoder", [("fmnist", 28, 0.1939, 0.6294), ("cifar10-ncsnpp", 32, 0.2924, 0.5516)]
)
def test_partial_modes_split_d2o_f_in_two(config: str, res: int, encoder: float, decoder: float):
    """Encoder-only and decoder-only freeze disjoint sets whose union is D2O-F's, at the fractions the docs give."""
    net = meta_network(config, res)
    enc, dec = set(frozen_names(net, "d2o-f-encoder")), set(frozen_names(net, "d2o-f-decoder"))
    assert enc and dec and not enc & dec and enc | dec == set(frozen_names(net, "d2o-f"))
    for mode, fraction in (("d2o-f-encoder", encoder), ("d2o-f-decoder", decoder)):
        report = apply_freeze(net, mode)
        assert abs(report.fraction - fraction) < 1e-4 and report.mode == mode
        trainable = {n for n, p in net.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in net.named_parameters()} - set(frozen_names(net, mode))


@pytest.mark.parametrize("config, res, fraction", [("fmnist", 28, 0.8941), ("cifar10-ncsnpp", 32, 0.9046)])
def test_plus_mode_adds_the_blocks_skips_and_qkv_to_d2o_f(config: str, res: int, fraction: float):
    """d2o-f-plus freezes D2O-F's set and the blocks' 1x1 skips and qkv, nothing else; norms, embeddings, affine
    layers and the input/output convs still train."""
    net = meta_network(config, res)
    base, plus = set(frozen_names(net, "d2o-f")), set(frozen_names(net, "d2o-f-plus"))
    added = plus - base
    assert base < plus and added
    assert {name.split(".")[-2] for name in added} == {"skip", "qkv"}
    report = apply_freeze(net, "d2o-f-plus")
    assert abs(report.fraction - fraction) < 1e-4 and report.mode == "d2o-f-plus"
    trainable = {n.split(".")[-2] for n, p in net.named_parameters() if p.requires_grad}
    assert {"affine", "map_layer0", "map_label", "norm0"} <= trainable
    assert not trainable & {"conv0", "conv1", "proj", "skip", "qkv"}
