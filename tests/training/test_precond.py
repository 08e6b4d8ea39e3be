"""Preconditioning coefficients against hand-computed values, and the one-step generator's definition."""

from __future__ import annotations

import pytest
import torch

from training.configs import network_config
from training.precond import D2OPrecond, EDMPrecond, OneStepGenerator

SIGMAS = [0.002, 0.5, 1.0, 80.0]
# sigma_data = 0.5. EDM: c_skip = .25/(s^2+.25), c_out = .5 s/sqrt(s^2+.25), c_in = 1/sqrt(s^2+.25), c_noise = ln(s)/4.
EDM_EXPECTED = {
    0.002: (0.99998400, 0.0019999840, 1.9999840, -1.5536520),
    0.5: (0.5, 0.35355339, 1.4142136, -0.17328680),
    1.0: (0.2, 0.44721360, 0.89442719, 0.0),
    80.0: (3.9060974e-5, 0.49999023, 0.012499756, 1.0955067),
}
# D2O (eps = 2e-3): c_skip = .25/((s-eps)^2+.25), c_out = .5 (s-eps)/sqrt(s^2+.25); c_in, c_noise as EDM.
D2O_EXPECTED = {
    0.002: (1.0, 0.0, 1.9999840, -1.5536520),
    0.5: (0.50200400, 0.35213918, 1.4142136, -0.17328680),
    1.0: (0.20064141, 0.44631917, 0.89442719, 0.0),
    80.0: (3.9062927e-5, 0.49997773, 0.012499756, 1.0955067),
}


def tiny(precond=EDMPrecond, label_dim: int = 10, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    return precond(img_resolution=16, img_channels=1, label_dim=label_dim, **network_config("tiny")).eval()


@pytest.mark.parametrize(("precond", "expected"), [(EDMPrecond, EDM_EXPECTED), (D2OPrecond, D2O_EXPECTED)])
def test_coefficients_hand_computed(precond, expected) -> None:
    net = tiny(precond)
    sigma = torch.tensor(SIGMAS, dtype=torch.float64).reshape(-1, 1, 1, 1)
    got = net.coefficients(sigma)
    for i, s in enumerate(SIGMAS):
        for name, value, want in zip(("c_skip", "c_out", "c_in", "c_noise"), got, expected[s], strict=True):
            assert value[i].item() == pytest.approx(want, rel=1e-4, abs=1e-7), f"{name} at sigma={s}"


def test_d2o_is_edm_with_shifted_sigma_in_skip_and_out() -> None:
    sigma = torch.tensor([0.3, 2.0, 80.0], dtype=torch.float64).reshape(-1, 1, 1, 1)
    edm, d2o = tiny(EDMPrecond).coefficients(sigma), tiny(D2OPrecond).coefficients(sigma)
    assert torch.allclose(d2o[2], edm[2]) and torch.allclose(d2o[3], edm[3])
    # c_out is (sigma - eps)/sigma of EDM's, c_skip is EDM's c_skip evaluated at sigma - eps.
    assert torch.allclose(d2o[1], edm[1] * (sigma - 2e-3) / sigma)
    assert torch.allclose(d2o[0], tiny(EDMPrecond).coefficients(sigma - 2e-3)[0])


@torch.no_grad()
def test_forward_composes_coefficients_with_the_inner_net() -> None:
    net = tiny(EDMPrecond)
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 16)
    labels = torch.eye(10)[[3, 7]]
    sigma = 0.5
    F_x = net.model(x * 1.4142136, torch.full((2,), -0.17328680), labels)
    want = 0.5 * x + 0.35355339 * F_x
    assert torch.allclose(net(x, torch.tensor([sigma, sigma]), labels), want, atol=1e-5)
    # A scalar sigma broadcasts like a per-sample one.
    assert torch.allclose(net(x, sigma, labels), want, atol=1e-5)


@torch.no_grad()
def test_missing_class_labels_mean_the_zero_label() -> None:
    net = tiny(EDMPrecond)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(net(x, 1.0, None), net(x, 1.0, torch.zeros(1, 10)))


@torch.no_grad()
def test_augment_labels_reach_the_network_as_keyword() -> None:
    torch.manual_seed(0)
    kw = network_config("tiny")
    net = EDMPrecond(16, 1, 0, augment_dim=9, **kw).eval()
    torch.nn.init.normal_(net.model.map_augment.weight)
    x = torch.randn(1, 1, 16, 16)
    plain = net(x, 1.0)
    assert torch.equal(net(x, 1.0, augment_labels=torch.zeros(1, 9)), plain)
    assert not torch.equal(net(x, 1.0, augment_labels=torch.ones(1, 9)), plain)


@torch.no_grad()
def test_one_step_generator_is_d2o_denoiser_at_sigma_max() -> None:
    d2o = tiny(D2OPrecond)
    gen = OneStepGenerator(d2o).eval()
    assert gen.sigma == 80.0 and gen.label_dim == 10 and gen.img_shape == (1, 16, 16)
    torch.manual_seed(2)
    z = torch.randn(3, 1, 16, 16)
    y = torch.tensor([0, 4, 9])
    want = d2o(80 * z, torch.full((3,), 80.0), torch.nn.functional.one_hot(y, 10).float())
    assert torch.equal(gen(z, y), want)


def test_one_step_generator_requires_labels_when_conditional() -> None:
    gen = OneStepGenerator(tiny(D2OPrecond)).eval()
    with pytest.raises(ValueError, match="class_labels"):
        gen(torch.randn(1, 1, 16, 16), None)


@torch.no_grad()
def test_unconditional_generator_ignores_labels() -> None:
    gen = OneStepGenerator(tiny(D2OPrecond, label_dim=0)).eval()
    z = torch.randn(2, 1, 16, 16)
    assert gen(z, None).shape == (2, 1, 16, 16)
