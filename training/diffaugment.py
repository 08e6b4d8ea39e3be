"""Differentiable discriminator augmentation (DiffAugment, Zhao et al. 2020), applied to reals and fakes alike.

A GAN's discriminator that sees few real images memorises them, and the generator then narrows its output to
what the discriminator accepts (recall drops). DiffAugment transforms every image the discriminator sees, real
or generated, in both the D and the G step, with operations whose gradient flows back to the generator, so the
generated distribution is not pushed towards the augmented one. Policies (comma-separated):

- ``color``: brightness shift in [-0.5, 0.5), saturation scale in [0, 2), contrast scale in [0.5, 1.5)
  (saturation is a no-op for one channel);
- ``translation``: integer shift of up to ``1/8`` of the side in each direction, zero fill;
- ``cutout``: a zeroed square of half the side at a random centre (clipped at the borders).

Randomness comes from a ``torch.Generator`` drawn for a whole global batch, so that every rank of a data-parallel
step applies the same transform to the same image as a single process would (``select`` takes a rank's share).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def parse_policy(text: str | None) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ``("translation", "cutout")``; empty or ``none`` -> no augmentation."""
    if not text or text.strip().lower() == "none":
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(POLICIES)} or none")
    return names


@dataclass(frozen=True)
class AugmentDraw:
    """The random parameters of one global batch (CPU tensors, one row per image)."""

    brightness: torch.Tensor  # [N]
    saturation: torch.Tensor  # [N]
    contrast: torch.Tensor  # [N]
    shift: torch.Tensor  # [N, 2] integer (dy, dx)
    cutout_centre: torch.Tensor  # [N, 2] integer (cy, cx)

    def select(self, index: slice | torch.Tensor) -> AugmentDraw:
        """The parameters of some rows (a rank's share of the global batch)."""
        return AugmentDraw(
            *(t[index] for t in (self.brightness, self.saturation, self.contrast, self.shift, self.cutout_centre))
        )


def draw(n: int, height: int, width: int, generator: torch.Generator) -> AugmentDraw:
    """Every parameter for ``n`` images, whatever the policy (so a policy change does not shift the stream)."""
    brightness = torch.rand(n, generator=generator) - 0.5
    saturation = torch.rand(n, generator=generator) * 2
    contrast = torch.rand(n, generator=generator) + 0.5
    limits = torch.tensor([int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)])
    shift = (torch.rand(n, 2, generator=generator) * (2 * limits + 1)).floor().long() - limits
    sides = torch.tensor([height, width])
    cut = (torch.rand(n, 2, generator=generator) * sides).floor().long()
    return AugmentDraw(brightness, saturation, contrast, shift, cut)


def _color(x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    x = x + per_image(d.brightness)
    if x.shape[1] > 1:
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * per_image(d.saturation) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * per_image(d.contrast) + mean


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Image ``i`` moved by ``shift[i] = (dy, dx)`` pixels; what enters from outside is zero."""
    b, _, h, w = x.shape
    pad = int(shift.abs().max().item()) if shift.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    shift = shift.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + pad - shift[:, :1]  # [B, H]
    cols = torch.arange(w, device=x.device)[None, :] + pad - shift[:, 1:]  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return moved.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    _, _, h, w = x.shape
    half_h, half_w = int(h * CUTOUT_RATIO + 0.5) // 2, int(w * CUTOUT_RATIO + 0.5) // 2
    centre = centre.to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= centre[:, :1] - half_h) & (ys < centre[:, :1] + half_h)  # [B, H]
    inside_x = (xs >= centre[:, 1:] - half_w) & (xs < centre[:, 1:] + half_w)  # [B, W]
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


class DiffAugment:
    """``augment(x, draw)`` applies the policy's transforms in the order color, translation, cutout."""

    def __init__(self, policy: str | tuple[str, ...] | None):
        self.policy = parse_policy(policy) if isinstance(policy, str | None) else tuple(policy)
        for name in self.policy:
            if name not in POLICIES:
                raise ValueError(f"unknown augmentation {name!r}")

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
        if d.shift.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but parameters for {d.shift.shape[0]}")
        if "color" in self.policy:
            x = _color(x, d)
        if "translation" in self.policy:
            x = _translate(x, d.shift)
        if "cutout" in self.policy:
            x = _cutout(x, d.cutout_centre)
        return x
