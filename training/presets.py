"""Named option sets for ``python -m training.finetune --preset NAME``; explicit options still win.

The paper presets follow the D2O-F runs of the paper's public training script (Zyriix/D2O ``train.sh``):
batch, G/D learning rates, R1, EMA half-life, duration, dropout 0, no augmentation. Their discriminator differs
by necessity (the paper's is Projected-GAN style on frozen ImageNet backbones, which we cannot download here; a
user with those weights passes them with ``--disc backbone``, see docs/reproduce.md). ``paper`` holds the
figures to expect, for the docs; ``teacher`` names the EDM checkpoint the paper fine-tuned.
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-cond": dict(
        args=dict(
            data="cifar10",
            batch=256,
            g_lr=1e-4,
            d_lr=1e-4,
            r1_gamma=1e-4,
            r1_interval=16,
            duration=5000,
            freeze="d2o-f",
            ema_halflife_kimg=500,
            ema_rampup=0.05,
            dropout=0.0,
            tick=50,
            snap=20,
        ),
        teacher="edm-cifar10-32x32-cond-ve.pkl (NCSN++; the -vp DDPM++ checkpoint works too), via training.import_edm",
        paper=dict(fid_d2o_f=1.54, teacher_fid=1.98, images="5M", arch="cifar10-ncsnpp"),
    ),
    "afhqv2-64": dict(
        args=dict(
            data="afhqv2-64x64.zip",
            batch=256,
            g_lr=2e-5,
            d_lr=4e-5,
            r1_gamma=1e-4,
            r1_interval=16,
            duration=10000,
            freeze="d2o-f",
            ema_halflife_kimg=500,
            ema_rampup=0.05,
            dropout=0.0,
            tick=50,
            snap=20,
        ),
        teacher="edm-afhqv2-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
        paper=dict(fid_d2o_f=1.23, images="up to 10M", arch="64-ncsnpp"),
    ),
    "ffhq-64": dict(
        args=dict(
            data="ffhq-64x64.zip",
            batch=256,
            g_lr=2e-5,
            d_lr=4e-5,
            r1_gamma=1e-4,
            r1_interval=16,
            duration=10000,
            freeze="d2o-f",
            ema_halflife_kimg=500,
            ema_rampup=0.05,
            dropout=0.0,
            tick=50,
            snap=20,
        ),
        teacher="edm-ffhq-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
        paper=dict(fid_d2o_f=0.85, images="up to 10M", arch="64-ncsnpp"),
    ),
    "imagenet64-cond": dict(
        args=dict(
            data="imagenet-64x64.zip",
            batch=512,
            g_lr=8e-6,
            d_lr=4e-5,
            r1_gamma=1e-4,
            r1_interval=16,
            duration=10000,
            freeze="d2o-f",
            ema_halflife_kimg=50000,
            ema_rampup=0.05,
            dropout=0.0,
            tick=50,
            snap=20,
        ),
        teacher="edm-imagenet-64x64-cond-adm.pkl (ADM)",
        paper=dict(fid_d2o_f=1.16, teacher_fid=2.64, images="5M (~48 A100 hours); script runs 10M", arch="adm"),
    ),
    # Our default: Fashion-MNIST 28x28x1 on 2 CPU cores. Small batch, so that a tick comes every minute or two;
    # lr 2e-4 for both nets (the paper's 1e-4 is for batch 256); a short EMA since runs are short.
    "fmnist": dict(
        args=dict(
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
        teacher="a run dir of python -m training.pretrain --data fmnist --arch fmnist",
        paper=None,
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_args(name: str) -> dict[str, Any]:
    """Parser defaults (argparse dest names) of a preset."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]["args"])
