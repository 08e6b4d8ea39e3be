import pytest
import torch

from tests.conftest import tiny_denoiser
from training.sampling import heun_steps_for_nfe, sample, seeded_noise, sigma_steps


class CountingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.label_dim = net.label_dim
        self.calls = 0

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        return self.net(x, sigma, labels)


@pytest.mark.parametrize("nfe", [1, 3, 7, 15, 35])
def test_heun_makes_exactly_nfe_network_calls(nfe):
    net = CountingNet(tiny_denoiser())
    out = sample(net, torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), nfe=nfe)
    assert net.calls == nfe
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("nfe", [1, 4, 10])
def test_euler_makes_exactly_nfe_calls(nfe):
    net = CountingNet(tiny_denoiser())
    sample(net, torch.randn(1, 1, 16, 16), torch.tensor([3]), nfe=nfe, solver="euler")
    assert net.calls == nfe


def test_even_heun_nfe_is_refused():
    with pytest.raises(ValueError, match="odd"):
        heun_steps_for_nfe(4)


def test_sigma_steps_match_edm_schedule():
    t = sigma_steps(18)
    assert t[0].item() == pytest.approx(80.0)
    assert t[17].item() == pytest.approx(0.002)
    assert t[18].item() == 0
    assert torch.all(t[:-1][1:] < t[:-1][:-1])
    rho = 7
    i = 5
    expected = (80 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert t[i].item() == pytest.approx(expected)


def test_one_step_heun_is_the_denoiser_at_sigma_max():
    net = tiny_denoiser()
    z = torch.randn(2, 1, 16, 16)
    labels = torch.tensor([0, 5])
    with torch.no_grad():
        direct = net(z.double() * 80, torch.tensor(80.0), torch.eye(10)[labels]).float()
    assert torch.allclose(sample(net, z, labels, nfe=1), direct, atol=1e-5)


def test_seeded_noise_is_batch_independent():
    a = seeded_noise([7, 8, 9], (1, 4, 4))
    b = seeded_noise([9], (1, 4, 4))
    c = seeded_noise([1, 2, 7], (1, 4, 4))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], c[2])
    assert not torch.equal(a[0], a[1])


def test_class_conditional_sampling_depends_on_labels():
    net = tiny_denoiser()
    with torch.no_grad():
        for p in net.model.map_label.parameters():
            p.normal_()
        for p in net.model.parameters():  # make the zero-init output layers non-trivial
            p.add_(torch.randn_like(p) * 0.01)
    z = seeded_noise([1, 1], (1, 16, 16))
    out = sample(net, z, torch.tensor([0, 9]), nfe=3)
    assert not torch.allclose(out[0], out[1])
