"""Seeded noise and EDM's deterministic samplers (Heun, Euler) with a chosen number of network evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.precond import EDMPrecond

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape]; row i depends only on seeds[i], never on the batch."""
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed) % (1 << 63))
        rows.append(torch.randn(*shape, generator=g))
    return torch.stack(rows).to(device) if rows else torch.empty(0, *shape, device=device)


def one_hot(labels: torch.Tensor | None, label_dim: int) -> torch.Tensor | None:
    if label_dim == 0 or labels is None:
        return None
    return torch.nn.functional.one_hot(labels.long(), label_dim).to(torch.float32)


def sigma_steps(
    num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """EDM's time steps t_0..t_{N-1} (Karras et al. eq. 5) followed by t_N = 0."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def heun_steps_for_nfe(nfe: int) -> int:
    """Heun with N steps evaluates the network 2N - 1 times (no correction on the last step)."""
    if nfe < 1 or nfe % 2 == 0:
        raise ValueError(f"Heun needs an odd NFE (2N-1): got {nfe}")
    return (nfe + 1) // 2


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
    """Deterministic sampling (EDM Algorithm 2 for Heun) from unit-variance ``latents``.

    ``class_labels`` are integer indices [N] (or None for unconditional nets). Exactly ``nfe`` calls of ``net``.
    """
    if solver == "heun":
        num_steps = heun_steps_for_nfe(nfe)
    elif solver == "euler":
        num_steps = nfe
    else:
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    labels = one_hot(class_labels, net.label_dim)
    t_steps = sigma_steps(num_steps, sigma_min, sigma_max, rho).to(latents.device)
    x = latents.to(torch.float64) * t_steps[0]
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        denoised = net(x, t_cur, labels).to(torch.float64)
        d_cur = (x - denoised) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if solver == "heun" and i < num_steps - 1:
            denoised = net(x_next, t_next, labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x.to(torch.float32)
