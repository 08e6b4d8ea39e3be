"""Fine-tune presets: the paper's settings as parser defaults; explicit options win."""

from __future__ import annotations

import pytest

from training.finetune import parse_args
from training.presets import PRESETS, preset_args


def test_cifar10_preset_is_the_papers_run():
    _, args = parse_args(["--preset", "cifar10-cond", "--teacher", "t"])
    assert (args.batch, args.g_lr, args.d_lr, args.r1_gamma, args.r1_interval) == (256, 1e-4, 1e-4, 1e-4, 16)
    assert (args.duration, args.freeze, args.dropout, args.objective) == (5000, "d2o-f", 0.0, "gan")


def test_explicit_options_win_and_every_preset_parses():
    _, args = parse_args(["--preset", "imagenet64-cond", "--teacher", "t", "--batch", "64"])
    assert args.batch == 64 and args.g_lr == 8e-6
    for name in PRESETS:
        _, args = parse_args(["--preset", name, "--teacher", "t"])
        assert all(getattr(args, k) == v for k, v in preset_args(name).items())
    with pytest.raises(SystemExit):
        parse_args(["--preset", "nope", "--teacher", "t"])
    with pytest.raises(KeyError, match="unknown preset"):
        preset_args("nope")
