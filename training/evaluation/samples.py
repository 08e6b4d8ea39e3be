"""The generated sets: seeded noise and balanced classes, sampled in one step or with Heun at a given NFE."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from training.sampling import sample, seeded_noise


def generator_fn(
    model: torch.nn.Module, kind: str, nfe: int, seeds: Sequence[int], labels: torch.Tensor | None, device: str
) -> Callable[[int, int], torch.Tensor]:
    """Images [start, stop) of a set: noise row i from seeds[i], class labels[i]; one step or Heun at ``nfe``."""
    shape = model.img_shape if kind == "generator" else (model.img_channels,) + (model.img_resolution,) * 2

    @torch.no_grad()
    def generate(start: int, stop: int) -> torch.Tensor:
        z = seeded_noise(seeds[start:stop], shape, device=device)
        y = labels[start:stop].to(device) if labels is not None else None
        if kind == "generator":
            return model(z, y)
        return sample(model, z, y, nfe=nfe)

    return generate


def balanced_labels(count: int, label_dim: int) -> torch.Tensor | None:
    """Class i % label_dim for sample i, so every class is equally represented and grid columns are classes."""
    return torch.arange(count) % label_dim if label_dim > 0 else None
