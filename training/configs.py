"""Named network configurations: the inner U-Net's type and constructor arguments.

Resolution, channels and label count come from the data set; these set the architecture only.
The CIFAR-10 and 64x64 entries are EDM's released training configurations (train.py).
"""

from __future__ import annotations

import copy
from typing import Any

NETWORK_CONFIGS: dict[str, dict[str, Any]] = {
    # Under 1M parameters: unit tests and smoke runs.
    "tiny": dict(
        model_type="SongUNet",
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
    ),
    # Sized to pre-train on 2 CPU cores at 28x28 (Fashion-MNIST): DDPM++ layout, 3 levels 28/14/7.
    "fmnist": dict(
        model_type="SongUNet",
        model_channels=32,
        channel_mult=[1, 2, 2],
        num_blocks=1,
        attn_resolutions=[7],
        dropout=0.1,
    ),
    "cifar10-ddpmpp": dict(
        model_type="SongUNet",
        model_channels=128,
        channel_mult=[2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        dropout=0.13,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    ),
    "cifar10-ncsnpp": dict(
        model_type="SongUNet",
        model_channels=128,
        channel_mult=[2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        dropout=0.13,
        embedding_type="fourier",
        encoder_type="residual",
        decoder_type="standard",
        channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1],
    ),
    "64-ddpmpp": dict(
        model_type="SongUNet",
        model_channels=128,
        channel_mult=[1, 2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        dropout=0.05,
    ),
    "imagenet64-adm": dict(
        model_type="DhariwalUNet",
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        num_blocks=3,
        attn_resolutions=[32, 16, 8],
        dropout=0.10,
    ),
}


def network_config(name: str) -> dict[str, Any]:
    """A copy of a named config: ``model_type`` plus the U-Net's keyword arguments."""
    if name not in NETWORK_CONFIGS:
        raise KeyError(f"unknown network config {name!r}; choose from {', '.join(NETWORK_CONFIGS)}")
    return copy.deepcopy(NETWORK_CONFIGS[name])
