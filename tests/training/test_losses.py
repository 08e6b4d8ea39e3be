"""The training objectives against values worked out by hand: EDM's loss, D2O's GAN terms and lazy R1, distillation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.losses import D2OLoss, DistillLoss, EDMLoss, ModeSeekingLoss

LN2, LN3 = math.log(2), math.log(3)


# ---------------------------------------------------------------- EDM


class Identity(nn.Module):
    """D(x; sigma) = x: the loss is then lambda(sigma) * (sigma n)^2. Records what it was called with."""

    label_dim = 3

    def forward(self, x, sigma, labels):
        self.seen = (x, sigma, labels)
        return x


def test_edm_sigma_and_weight():
    loss = EDMLoss()
    assert loss.sigma(torch.tensor(0.0)).item() == pytest.approx(math.exp(-1.2))
    assert loss.sigma(torch.tensor(1.0)).item() == pytest.approx(1.0)  # -1.2 + 1.2
    # lambda(sigma) = (sigma^2 + 0.25) / (0.25 sigma^2): 8 at sigma = 0.5, 5 at 1, 4 + 1/sigma^2 -> 4 at large sigma.
    sigma = torch.tensor([0.5, 1.0, 1e4])
    assert loss.weight(sigma).tolist() == pytest.approx([8.0, 5.0, 4.0])


def test_edm_loss_on_an_identity_denoiser():
    loss = EDMLoss()
    images = torch.zeros(2, 1, 2, 2)
    rnd = ((torch.tensor([math.log(0.5), 0.0]) + 1.2) / 1.2).view(2, 1, 1, 1)  # sigma = 0.5 and 1
    noise = torch.ones_like(images)
    net = Identity()
    out = loss(net, images, torch.tensor([2, 0]), rnd, noise)
    assert out.shape == images.shape
    # lambda * (sigma * 1)^2 = 8 * 0.25 = 2 and 5 * 1 = 5, every pixel.
    assert out[0].unique().item() == pytest.approx(2.0) and out[1].unique().item() == pytest.approx(5.0)
    x, sigma, labels = net.seen
    assert torch.allclose(sigma.flatten(), torch.tensor([0.5, 1.0]))
    assert torch.equal(labels, torch.tensor([[0.0, 0, 1], [1, 0, 0]]))  # one-hot of the class indices
    wrapped = nn.Module()
    wrapped.module = net  # a DDP wrapper: label_dim is on the wrapped module
    wrapped.forward = net.forward
    assert torch.equal(loss(wrapped, images, torch.tensor([2, 0]), rnd, noise), out)


def test_edm_draw_is_seeded_and_shaped():
    loss = EDMLoss()
    images = torch.zeros(3, 2, 4, 4)
    a = loss.draw(images, generator=torch.Generator().manual_seed(1))
    b = loss.draw(images, generator=torch.Generator().manual_seed(1))
    assert a[0].shape == (3, 1, 1, 1) and a[1].shape == images.shape
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- D2O


class LinearD(nn.Module):
    """logits[n, l] = <w_l, x_n> (+ 100 * label, to see that labels reach D): grad_x of the level sum is sum_l w_l."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(weights)  # [L, C, H, W]

    def forward(self, x, labels, segments=1):
        self.labels, self.segments = labels, segments
        logits = torch.einsum("nchw,lchw->nl", x, self.w)
        return logits if labels is None else logits + 100 * labels[:, None].float()


def test_generator_and_discriminator_terms_by_hand():
    # softplus(0) = ln 2; softplus(-ln 3) = ln(4/3); softplus(ln 3) = ln 4.
    fake = torch.tensor([[0.0, LN3], [LN3, 0.0]])  # [N=2, L=2]
    # L_G = mean_n softplus(-D) per level, summed: 2 * (ln 2 + ln(4/3)) / 2.
    assert D2OLoss.generator_term(fake).item() == pytest.approx(LN2 + math.log(4 / 3))
    real = torch.tensor([[LN3], [0.0]])
    fake = torch.tensor([[-LN3], [LN3]])
    # L_D = mean(softplus(-ln 3), softplus(0)) + mean(softplus(-ln 3), softplus(ln 3)).
    expected = (math.log(4 / 3) + LN2) / 2 + (math.log(4 / 3) + math.log(4)) / 2
    assert D2OLoss.discriminator_term(real, fake).item() == pytest.approx(expected)


def test_r1_penalty_of_a_linear_discriminator():
    torch.manual_seed(0)
    w = torch.randn(2, 1, 3, 3)
    d = LinearD(w.clone())
    x = torch.randn(4, 1, 3, 3, requires_grad=True)
    penalty = D2OLoss.r1_penalty(d(x, None), x)
    # grad_x sum_l <w_l, x> = w_0 + w_1 for every sample: the penalty is ||w_0 + w_1||^2.
    assert penalty.item() == pytest.approx(w.sum(0).square().sum().item(), rel=1e-6)
    # It is differentiable in D's weights (create_graph): d/dw_l ||w_0 + w_1||^2 = 2 (w_0 + w_1).
    (grad_w,) = torch.autograd.grad(penalty, d.w)
    assert torch.allclose(grad_w, 2 * w.sum(0).expand_as(w), atol=1e-6)


def test_lazy_r1_schedule_and_scale():
    loss = D2OLoss(r1_gamma=0.1, r1_interval=4)
    assert [s for s in range(10) if loss.r1_due(s)] == [0, 4, 8]
    assert loss.lazy_r1(torch.tensor(2.0)).item() == pytest.approx(2.0 * 0.1 / 2 * 4)  # gamma/2 * penalty * k
    assert not any(D2OLoss(r1_gamma=0.0, r1_interval=4).r1_due(s) for s in range(8))
    assert not any(D2OLoss(r1_gamma=0.1, r1_interval=0).r1_due(s) for s in range(8))


def test_discriminator_loss_adds_r1_only_on_its_steps():
    torch.manual_seed(1)
    w = torch.randn(2, 1, 3, 3)
    d = LinearD(w.clone())
    loss = D2OLoss(r1_gamma=0.5, r1_interval=2)
    real, labels = torch.randn(3, 1, 3, 3), torch.tensor([0, 1, 0])
    fake = torch.randn(3, 1, 3, 3, requires_grad=True)
    on = loss.discriminator_loss(d, real, fake, labels, step=2)
    assert torch.equal(d.labels, torch.cat([labels, labels]))  # reals and fakes in one forward, each with its label
    assert d.segments == 2  # ... as two segments, so no batch statistic mixes them
    assert on.penalty.item() == pytest.approx(w.sum(0).square().sum().item(), rel=1e-6)
    assert on.r1.item() == pytest.approx(on.penalty.item() * 0.5 / 2 * 2)
    assert on.total.item() == pytest.approx(on.loss.item() + on.r1.item())
    expected = D2OLoss.discriminator_term(d(real, labels), d(fake, labels))
    assert on.loss.item() == pytest.approx(expected.item())
    off = loss.discriminator_loss(d, real, fake, labels, step=3)
    assert off.penalty is None and off.r1.item() == 0 and off.loss.item() == pytest.approx(on.loss.item())
    off.total.backward()
    assert fake.grad is None and not real.requires_grad  # fakes detached for D; the caller's reals untouched
    assert d.w.grad is not None


def test_generator_loss_reaches_the_generator():
    d = LinearD(torch.ones(1, 1, 2, 2))
    fake = torch.zeros(2, 1, 2, 2, requires_grad=True)
    g = D2OLoss().generator_loss(d, fake, None)
    assert g.item() == pytest.approx(LN2)  # D(G(z)) = 0
    g.backward()
    # d/dx mean_n softplus(-<w, x_n>) = -sigmoid(0) * w / N = -0.25 per pixel.
    assert torch.allclose(fake.grad, torch.full_like(fake, -0.25))


# ---------------------------------------------------------------- distillation


class ChannelsBackbone(nn.Module):
    """One feature level: the image itself (2 channels)."""

    def forward(self, x, labels):
        return [x]


def test_distill_l2_and_feature_distances():
    pred = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    target = torch.zeros(2, 1, 2, 2)
    l2 = DistillLoss("l2")
    assert l2.distance(pred, target, None).tolist() == [1.0, 4.0]  # mean squared error per sample
    assert l2(pred, target, None).item() == 2.5
    # Feature distance: unit-normalized channel vectors (1, 0) vs (0, 1) at every pixel: squared difference 2.
    a = torch.zeros(1, 2, 3, 3)
    a[:, 0] = 5.0
    b = torch.zeros(1, 2, 3, 3)
    b[:, 1] = 0.5
    feat = DistillLoss("feature", backbone=ChannelsBackbone())
    assert feat(a, b, None).item() == pytest.approx(2.0, rel=1e-6)
    assert feat(a, 3 * a, None).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant per pixel
    with pytest.raises(ValueError, match="one of"):
        DistillLoss("l1")
    with pytest.raises(ValueError, match="backbone"):
        DistillLoss("feature")


# ---------------------------------------------------------------- mode seeking


def test_mode_seeking_is_noise_distance_over_feature_distance():
    # Features (1, 0) against (0, 1) at every pixel: feature distance 2; noises 0 and 3: mean |dz| = 3.
    a = torch.zeros(1, 2, 3, 3)
    a[:, 0] = 1.0
    b = torch.zeros(1, 2, 3, 3)
    b[:, 1] = 1.0
    za, zb = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 3.0)
    ms = ModeSeekingLoss(ChannelsBackbone(), eps=0.0)
    assert ms.ratio(a, b, za, zb, None).item() == pytest.approx(2 / 3, rel=1e-6)
    assert ms(a, b, za, zb, None).item() == pytest.approx(1.5, rel=1e-6)
    # Identical images: the term is capped at 1/eps, not infinite.
    assert ModeSeekingLoss(ChannelsBackbone(), eps=1e-5)(a, a, za, zb, None).item() == pytest.approx(1e5, rel=1e-3)


def test_mode_seeking_gradient_pushes_the_pair_apart():
    """A descent step on the term moves the two images' features apart (lower loss, larger distance)."""
    torch.manual_seed(0)
    a = torch.rand(2, 2, 3, 3) + 0.1
    b = (a + 0.05 * torch.randn_like(a)).requires_grad_(True)
    za, zb = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ms = ModeSeekingLoss(ChannelsBackbone())
    before = ms.ratio(a, b, za, zb, None).detach()
    loss = ms(a, b, za, zb, None)
    loss.backward()
    with torch.no_grad():
        b_next = b - 1e-4 * b.grad
    assert (ms.ratio(a, b_next, za, zb, None) > before).all()
    assert ms(a, b_next, za, zb, None) < loss
