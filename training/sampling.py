"""Seeded noise, one-hot labels and the deterministic EDM samplers (Heun, Euler) at a chosen number of network
evaluations (NFE).

The noise levels are EDM's (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) +
i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < N, then sigma_N = 0. Heun (EDM Algorithm 2) takes
an Euler step on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma and corrects it with the slope at
the step's end, except on the last step (to sigma = 0): N steps cost 2N - 1 evaluations, so 18 steps give NFE 35.
The state is integrated in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.precond import EDMPrecond

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SOLVERS = ("heun", "euler")


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape] whose row i depends only on seeds[i], never on the batch."""
    rows = [torch.randn(*shape, generator=torch.Generator().manual_seed(int(s) % (1 << 63))) for s in seeds]
    return torch.stack(rows).to(device) if rows else torch.empty(0, *shape, device=device)


_M64 = (1 << 64) - 1


def class_from_seed(seed: int, label_dim: int) -> int:
    """The class of a conditional image whose caller names none, drawn from its seed alone (splitmix64's
    finaliser), so that a seed gives the same image wherever it is generated: the service, ``training.generate``
    and ``training.generation.OneStepPipeline`` all draw it here."""
    if label_dim < 1:
        raise ValueError(f"label_dim must be >= 1 for a class, got {label_dim}")
    x = (int(seed) + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) % label_dim


def one_hot(labels: torch.Tensor | None, label_dim: int) -> torch.Tensor | None:
    """Integer classes [N] -> float32 one-hot [N, label_dim]; None for unconditional nets or missing labels."""
    if labels is None or label_dim == 0:
        return None
    return torch.nn.functional.one_hot(labels.long(), label_dim).to(torch.float32)


def sigma_steps(
    num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """The float64 noise levels t_0 = sigma_max > ... > t_{N-1} = sigma_min, followed by t_N = 0."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    frac = torch.arange(num_steps, dtype=torch.float64) / max(num_steps - 1, 1)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(hi + frac * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def heun_steps_for_nfe(nfe: int) -> int:
    """Heun steps N for an NFE of 2N - 1 (the last step has no correction); the NFE must be odd."""
    if nfe < 1 or nfe % 2 == 0:
        raise ValueError(f"Heun needs an odd NFE (2N-1): got {nfe}")
    return (nfe + 1) // 2


def steps_for_nfe(nfe: int, solver: str) -> int:
    """Solver steps that make exactly ``nfe`` network evaluations."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    return heun_steps_for_nfe(nfe) if solver == "heun" else nfe


@torch.no_grad()
def sample(
    net: EDMPrecond,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    nfe: int = 35,
    solver: str = "heun",
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """Deterministic sampling from unit-variance ``latents`` with exactly ``nfe`` calls of ``net``.

    ``class_labels`` are integer classes [N] (None for unconditional nets). Returns float32 images.
    """
    num_steps = steps_for_nfe(nfe, solver)
    labels = one_hot(class_labels, net.label_dim)
    t = sigma_steps(num_steps, sigma_min, sigma_max, rho).to(latents.device)

    def slope(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - net(x, sigma, labels).to(torch.float64)) / sigma

    x = latents.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        d_cur = slope(x, t_cur)
        x_next = x + (t_next - t_cur) * d_cur
        if solver == "heun" and i < num_steps - 1:  # correct with the slope at the step's end
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * slope(x_next, t_next))
        x = x_next
    return x.to(torch.float32)
