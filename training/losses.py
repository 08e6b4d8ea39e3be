"""Training objectives: EDM's denoising loss (pre-training), D2O's GAN loss and the distillation baseline's.

Each is a small object holding its hyperparameters; the tasks (``training.pretrain_task``, ``training.finetune``)
own the networks, optimizers and randomness and call these for the numbers to minimize.

- ``EDMLoss`` (Karras et al. 2022, sec. 5): ln sigma ~ N(P_mean, P_std^2), weight
  lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, L = lambda ||D(y + sigma n; sigma) - y||^2.
- ``D2OLoss`` (Zheng & Yang 2025): non-saturating GAN loss, L_D = softplus(-D(x)) + softplus(D(G(z))),
  L_G = softplus(-D(G(z))), each a batch mean summed over the discriminator's feature levels (logits [N, L]);
  lazy R1 on reals, gamma/2 ||grad_x D(x)||^2 every ``r1_interval`` D steps, scaled by the interval.
- ``DistillLoss``: the baseline D2O argues against, a distance between G(z) and the teacher's sampler output
  from the same z (pairs from ``training.make_pairs``): per-pixel L2 or a feature distance on the teacher encoder.
- ``ModeSeekingLoss`` (Mao et al. 2019, MSGAN): for two samples of one class from noises z1, z2, the ratio
  d(z1, z2) / d(G(z1), G(z2)); minimizing it spreads G's outputs where its inputs differ, against mode collapse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.discriminator import FrozenBackbone, feature_distance
from training.precond import EDMPrecond
from training.sampling import one_hot

#: A differentiable transform of a batch of images (what the discriminator sees).
Augment = Callable[[torch.Tensor], torch.Tensor]


class EDMLoss:
    """EDM's denoising score-matching loss; per-element values [N, C, H, W] (the caller reduces)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def draw(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss's randomness for a batch: (standard normal [N,1,1,1] for ln sigma, unit noise like images)."""
        n = images.shape[0]
        rnd_normal = torch.randn([n, 1, 1, 1], generator=generator)
        unit_noise = torch.randn(images.shape, generator=generator)
        return rnd_normal.to(images.device), unit_noise.to(images.device)

    def sigma(self, rnd_normal: torch.Tensor) -> torch.Tensor:
        """Noise levels from standard normals: ln sigma ~ N(P_mean, P_std^2)."""
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2: unit loss scale at every sigma."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self,
        net: EDMPrecond | nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        rnd_normal: torch.Tensor | None = None,
        unit_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-element loss [N, C, H, W]; ``labels`` are integer class indices; ``net`` may be a DDP wrapper.

        Pass ``rnd_normal``/``unit_noise`` (from ``draw``) to control the randomness, e.g. to make a
        data-parallel step equal a single-process one.
        """
        if rnd_normal is None or unit_noise is None:
            rnd_normal, unit_noise = self.draw(images)
        sigma = self.sigma(rnd_normal)
        weight = self.weight(sigma)
        label_dim = getattr(net, "label_dim", None)
        if label_dim is None:  # DDP wrapper
            label_dim = net.module.label_dim
        denoised = net(images + unit_noise * sigma, sigma, one_hot(labels, label_dim))
        return weight * (denoised - images) ** 2


@dataclass
class DiscriminatorTerms:
    """One D step's losses: ``loss`` (the GAN term), ``r1`` (the scaled penalty, zero off the interval) and what
    the stats record."""

    loss: torch.Tensor
    r1: torch.Tensor
    penalty: torch.Tensor | None  # ||grad_x D(x)||^2, batch mean; None off the interval
    logits_real: torch.Tensor
    logits_fake: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.loss + self.r1


class D2OLoss:
    """D2O's objective: the non-saturating GAN loss with lazy R1 on reals (gamma 0 or interval 0: no R1)."""

    def __init__(self, r1_gamma: float = 1e-4, r1_interval: int = 16):
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval

    # ------------------------------------------------------------ the terms, on logits [N, L]

    @staticmethod
    def generator_term(logits_fake: torch.Tensor) -> torch.Tensor:
        """L_G = softplus(-D(G(z))): batch mean, summed over levels."""
        return F.softplus(-logits_fake).mean(0).sum()

    @staticmethod
    def discriminator_term(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """L_D = softplus(-D(x)) + softplus(D(G(z))): batch means, summed over levels."""
        return F.softplus(-logits_real).mean(0).sum() + F.softplus(logits_fake).mean(0).sum()

    @staticmethod
    def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """||grad_x sum_levels D(x)||^2 per sample, batch mean; differentiable (for D's update)."""
        (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()

    def r1_due(self, step: int) -> bool:
        """Whether D step ``step`` carries the lazy R1 term."""
        return self.r1_gamma > 0 and self.r1_interval > 0 and step % self.r1_interval == 0

    def lazy_r1(self, penalty: torch.Tensor) -> torch.Tensor:
        """gamma/2 * penalty, times the interval: applied every ``r1_interval`` steps, it weighs as gamma/2 each."""
        return penalty * (self.r1_gamma / 2) * self.r1_interval

    # ------------------------------------------------------------ on the networks

    def discriminator_loss(
        self,
        disc: nn.Module,
        real: torch.Tensor,
        fake: torch.Tensor,
        labels: torch.Tensor | None,
        step: int,
        augment: Augment | None = None,
    ) -> DiscriminatorTerms:
        """D's losses on reals and (detached) fakes in one forward, with lazy R1 on its interval.

        ``augment`` (differentiable, e.g. ``training.diffaugment.DiffAugment``) transforms what D sees, reals then
        fakes as one batch; R1 is still the gradient with respect to the un-augmented reals.
        """
        n = real.shape[0]
        r1_step = self.r1_due(step)
        real = real.detach().requires_grad_(r1_step)
        seen = torch.cat([real, fake.detach()])
        if augment is not None:
            seen = augment(seen)
        both = disc(seen, torch.cat([labels, labels]) if labels is not None else None, segments=2)
        logits_real, logits_fake = both[:n], both[n:]
        loss = self.discriminator_term(logits_real, logits_fake)
        r1 = torch.zeros((), device=real.device)
        penalty = None
        if r1_step:
            penalty = self.r1_penalty(logits_real, real)
            r1 = self.lazy_r1(penalty)
        return DiscriminatorTerms(loss, r1, penalty, logits_real, logits_fake)

    def generator_loss(
        self, disc: nn.Module, fake: torch.Tensor, labels: torch.Tensor | None, augment: Augment | None = None
    ) -> torch.Tensor:
        return self.generator_term(disc(augment(fake) if augment is not None else fake, labels))


class DistillLoss:
    """Mean distance between G's outputs and the teacher's sampler outputs for the same noise and labels.

    ``l2``: per-pixel squared error, mean over pixels; ``feature``: ``training.discriminator.feature_distance`` on
    ``backbone`` (the teacher's encoder), an LPIPS-like distance.
    """

    KINDS = ("l2", "feature")

    def __init__(self, kind: str = "l2", backbone: FrozenBackbone | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"distill loss must be one of {self.KINDS}, got {kind!r}")
        if kind == "feature" and backbone is None:
            raise ValueError("the feature distill loss needs a backbone (the teacher's encoder)")
        self.kind = kind
        self.backbone = backbone

    def distance(self, pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per-sample distance [N]."""
        if self.kind == "feature":
            return feature_distance(self.backbone, pred, target, labels)
        return (pred - target).square().mean(dim=(1, 2, 3))

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.distance(pred, target, labels).mean()


class ModeSeekingLoss:
    """MSGAN's mode-seeking term: mean over pairs of 1 / (d_x / d_z + eps).

    d_z is the mean absolute difference of the two unit noises (about 2/sqrt(pi) for independent draws) and d_x
    the feature distance of the two images (``training.discriminator.feature_distance`` on ``backbone``, so that
    diversity is counted in what the teacher's encoder sees, not in pixel noise). Both images of a pair carry the
    same label. The term is bounded by 1/eps and falls as G maps distinct noises to distinct images.
    """

    def __init__(self, backbone: FrozenBackbone, eps: float = 1e-5):
        self.backbone = backbone
        self.eps = eps

    def ratio(
        self, a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """d_x / d_z per pair [N]."""
        d_x = feature_distance(self.backbone, a, b, labels)
        d_z = (za - zb).abs().flatten(1).mean(dim=1)
        return d_x / d_z

    def __call__(
        self, a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        return (1.0 / (self.ratio(a, b, za, zb, labels) + self.eps)).mean()
