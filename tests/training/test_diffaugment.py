"""DiffAugment: each transform against a hand-built expectation, gradients, and per-rank slicing."""

from __future__ import annotations

import pytest
import torch

from training.diffaugment import AugmentDraw, DiffAugment, draw, parse_policy


def fixed_draw(n: int, **values: torch.Tensor) -> AugmentDraw:
    base = dict(
        brightness=torch.zeros(n), saturation=torch.ones(n), contrast=torch.ones(n),
        shift=torch.zeros(n, 2, dtype=torch.long), cutout_centre=torch.zeros(n, 2, dtype=torch.long),
    )
    base.update(values)
    return AugmentDraw(**base)


def test_parse_policy() -> None:
    assert parse_policy("translation, cutout") == ("translation", "cutout")
    assert parse_policy("") == () and parse_policy(None) == () and parse_policy("none") == ()
    with pytest.raises(ValueError, match="flip"):
        parse_policy("translation,flip")
    assert not DiffAugment("none") and DiffAugment("color")


def test_translation_moves_pixels_and_fills_zeros() -> None:
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5) + 1
    d = fixed_draw(2, shift=torch.tensor([[1, -2], [0, 0]]))
    out = DiffAugment("translation")(x, d)
    expected = torch.zeros(4, 5)
    expected[1:, :3] = x[0, 0, :3, 2:]  # down by one row, left by two columns
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out[1], x[1])


def test_cutout_zeroes_a_half_side_square_clipped_at_the_border() -> None:
    x = torch.ones(2, 3, 8, 8)
    d = fixed_draw(2, cutout_centre=torch.tensor([[4, 4], [0, 7]]))
    out = DiffAugment("cutout")(x, d)
    mask0 = torch.ones(8, 8)
    mask0[2:6, 2:6] = 0
    mask1 = torch.ones(8, 8)
    mask1[0:2, 5:8] = 0
    assert torch.equal(out[0], mask0.expand(3, 8, 8)) and torch.equal(out[1], mask1.expand(3, 8, 8))


def test_color_by_hand() -> None:
    grey = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # mean 1.5
    d = fixed_draw(1, brightness=torch.tensor([0.25]), contrast=torch.tensor([1.5]), saturation=torch.tensor([0.0]))
    out = DiffAugment("color")(grey, d)
    # +0.25 -> mean 1.75; saturation is a no-op for one channel; contrast 1.5 about the mean
    assert torch.allclose(out, (grey + 0.25 - 1.75) * 1.5 + 1.75)
    rgb = torch.tensor([1.0, 2.0, 6.0]).view(1, 3, 1, 1)
    d = fixed_draw(1, saturation=torch.tensor([0.0]))
    assert torch.allclose(DiffAugment("color")(rgb, d), torch.full_like(rgb, 3.0))  # fully desaturated


def test_gradient_reaches_the_input_where_pixels_survive() -> None:
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    d = draw(3, 8, 8, torch.Generator().manual_seed(0))
    aug = DiffAugment("color,translation,cutout")
    aug(x, d).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Translation only: the gradient is 1 on pixels that stay inside the image, 0 on those shifted out.
    x2 = torch.zeros(1, 1, 6, 6, requires_grad=True)
    DiffAugment("translation")(x2, fixed_draw(1, shift=torch.tensor([[0, 2]]))).sum().backward()
    expected = torch.ones(6, 6)
    expected[:, 4:] = 0
    assert torch.equal(x2.grad[0, 0], expected)


def test_draw_is_seeded_and_ranks_slice_the_global_draw() -> None:
    a = draw(8, 28, 28, torch.Generator().manual_seed(3))
    b = draw(8, 28, 28, torch.Generator().manual_seed(3))
    assert torch.equal(a.shift, b.shift) and torch.equal(a.brightness, b.brightness)
    assert a.shift.abs().max() <= 4 and (a.cutout_centre >= 0).all() and (a.cutout_centre < 28).all()
    x = torch.randn(8, 1, 28, 28)
    aug = DiffAugment("translation,cutout")
    whole = aug(x, a)
    halves = torch.cat([aug(x[:4], a.select(slice(0, 4))), aug(x[4:], a.select(torch.arange(4, 8)))])
    assert torch.equal(whole, halves)
    with pytest.raises(ValueError, match="parameters for"):
        aug(x[:3], a)
