"""Named option sets for ``python -m training.finetune --preset NAME``; explicit options still win.

The paper presets follow the D2O-F runs of the paper's public training script (Zyriix/D2O ``train.sh``):
batch, G/D learning rates, R1, EMA half-life, duration, dropout 0, no augmentation. Their discriminator differs
by necessity (the paper's is Projected-GAN style on frozen ImageNet backbones, which we cannot download here; a
user with those weights passes them with ``--disc backbone``, see docs/reproduce.md). ``paper`` holds the
figures to expect, for the docs; ``teacher`` names the EDM checkpoint the paper fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Parser defaults (argparse dest names) of a named run, the teacher it expects, the paper's figures."""

    args: Mapping[str, Any]
    teacher: str
    paper: Mapping[str, Any] | None = None


# What the paper's D2O-F runs share: R1 every 16 D steps, frozen block convs, the EMA ramp, no dropout, batch 256,
# 10M images at G/D learning rates 2e-5/4e-5 with a 500 kimg EMA half-life (the 64x64 runs). Each preset names
# its data and overrides what differs.
PAPER_RUN: Mapping[str, Any] = MappingProxyType(
    dict(
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
    )
)


def _preset(data: str, teacher: str, paper: dict[str, Any] | None = None, **overrides: Any) -> Preset:
    unknown = set(overrides) - set(PAPER_RUN)
    if unknown:
        raise ValueError(f"preset overrides {sorted(unknown)}, which the base does not set")
    args = {"data": data, **PAPER_RUN, **overrides}
    return Preset(args=MappingProxyType(args), teacher=teacher, paper=MappingProxyType(paper) if paper else None)


PRESETS: dict[str, Preset] = {
    "cifar10-cond": _preset(
        "cifar10",
        teacher="edm-cifar10-32x32-cond-ve.pkl (NCSN++; the -vp DDPM++ checkpoint works too), via training.import_edm",
        paper=dict(fid_d2o_f=1.54, teacher_fid=1.98, images="5M", arch="cifar10-ncsnpp"),
        g_lr=1e-4,
        d_lr=1e-4,
        duration=5000,
    ),
    "afhqv2-64": _preset(
        "afhqv2-64x64.zip",
        teacher="edm-afhqv2-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
        paper=dict(fid_d2o_f=1.23, images="up to 10M", arch="64-ncsnpp"),
    ),
    "ffhq-64": _preset(
        "ffhq-64x64.zip",
        teacher="edm-ffhq-64x64-uncond-ve.pkl (NCSN++ 1,2,2,2; the -vp checkpoint works too)",
        paper=dict(fid_d2o_f=0.85, images="up to 10M", arch="64-ncsnpp"),
    ),
    "imagenet64-cond": _preset(
        "imagenet-64x64.zip",
        teacher="edm-imagenet-64x64-cond-adm.pkl (ADM)",
        paper=dict(fid_d2o_f=1.16, teacher_fid=2.64, images="5M (~48 A100 hours); script runs 10M", arch="adm"),
        batch=512,
        g_lr=8e-6,
        ema_halflife_kimg=50000,
    ),
    # Our default: Fashion-MNIST 28x28x1 on 2 CPU cores. Small batch, so that a tick comes every minute or two;
    # lr 2e-4 for both nets (the paper's 1e-4 is for batch 256); a short EMA since runs are short.
    "fmnist": _preset(
        "fmnist",
        teacher="a run dir of python -m training.pretrain --data fmnist --arch fmnist",
        batch=32,
        g_lr=2e-4,
        d_lr=2e-4,
        duration=100,
        ema_halflife_kimg=5,
        tick=2,
        snap=5,
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_args(name: str) -> dict[str, Any]:
    """Parser defaults (argparse dest names) of a preset."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(dict(PRESETS[name].args))
