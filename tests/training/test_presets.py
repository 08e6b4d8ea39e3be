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


# The resolved presets as they stood before the presets were written as one base and small overrides;
# the refactor must not change a single value.
_PAPER_RUN = dict(r1_gamma=1e-4, r1_interval=16, freeze="d2o-f", ema_rampup=0.05, dropout=0.0, tick=50, snap=20)
EXPECTED_ARGS = {
    "cifar10-cond": dict(
        data="cifar10", batch=256, g_lr=1e-4, d_lr=1e-4, duration=5000, ema_halflife_kimg=500, **_PAPER_RUN
    ),
    "afhqv2-64": dict(
        data="afhqv2-64x64.zip", batch=256, g_lr=2e-5, d_lr=4e-5, duration=10000, ema_halflife_kimg=500, **_PAPER_RUN
    ),
    "ffhq-64": dict(
        data="ffhq-64x64.zip", batch=256, g_lr=2e-5, d_lr=4e-5, duration=10000, ema_halflife_kimg=500, **_PAPER_RUN
    ),
    "imagenet64-cond": dict(
        data="imagenet-64x64.zip",
        batch=512,
        g_lr=8e-6,
        d_lr=4e-5,
        duration=10000,
        ema_halflife_kimg=50000,
        **_PAPER_RUN,
    ),
    "fmnist": dict(
        data="fmnist",
        batch=32,
        g_lr=2e-4,
        d_lr=2e-4,
        r1_gamma=1e-4,
        r1_interval=16,
        duration=100,
        freeze="d2o-f",
        ema_halflife_kimg=5,
        ema_rampup=0.05,
        dropout=0.0,
        tick=2,
        snap=5,
    ),
}
EXPECTED_TEACHER = {
    "cifar10-cond": "edm-cifar10-32x32-cond-ve.pkl (NCSN++; the -vp DDPM++ checkpoint works too), via "
    "training.import_edm",
    "afhqv2-64": "edm-afhqv2-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
    "ffhq-64": "edm-ffhq-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
    "imagenet64-cond": "edm-imagenet-64x64-cond-adm.pkl (ADM)",
    "fmnist": "a run dir of python -m training.pretrain --data fmnist --arch fmnist",
}
EXPECTED_PAPER = {
    "cifar10-cond": dict(fid_d2o_f=1.54, teacher_fid=1.98, images="5M", arch="cifar10-ncsnpp"),
    "afhqv2-64": dict(fid_d2o_f=1.23, images="up to 10M", arch="64-ncsnpp"),
    "ffhq-64": dict(fid_d2o_f=0.85, images="up to 10M", arch="64-ncsnpp"),
    "imagenet64-cond": dict(
        fid_d2o_f=1.16, teacher_fid=2.64, images="5M (~48 A100 hours); script runs 10M", arch="adm"
    ),
    "fmnist": None,
}


@pytest.mark.parametrize("name", list(EXPECTED_ARGS))
def test_resolved_presets_keep_their_values(name: str):
    assert list(PRESETS) == list(EXPECTED_ARGS)
    args = preset_args(name)
    assert args == EXPECTED_ARGS[name]
    assert all(type(args[k]) is type(v) for k, v in EXPECTED_ARGS[name].items()), name  # 5000 stays an int
    assert PRESETS[name].teacher == EXPECTED_TEACHER[name]
    assert PRESETS[name].paper == EXPECTED_PAPER[name]
    _, parsed = parse_args(["--preset", name, "--teacher", "t"])
    assert {k: getattr(parsed, k) for k in args} == EXPECTED_ARGS[name]
