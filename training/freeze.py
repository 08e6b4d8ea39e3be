"""D2O-F: which generator parameters stay frozen during the GAN fine-tune.

The rule (Zheng & Yang 2025, as the paper's public code applies it with ``--freeze=1``): a parameter is frozen when its
name contains one of ``block``, ``up``, ``down``, ``in`` *and* one of ``conv``, ``proj`` (plain substring tests on
the full parameter name, e.g. ``model.enc.16x16_block0.conv1.weight``). In EDM's U-Nets that selects the 3x3
convolutions ``conv0``/``conv1`` of every UNetBlock (encoder, decoder, ``_up``/``_down``/``_in0``/``_in1``
blocks) and the attention output projections ``proj``. Trainable stay: group norms, the noise/label embeddings and
the blocks' ``affine`` layers, the 1x1 ``skip`` convs, ``qkv``, the input conv ``enc.*_conv``, the NCSN++
``aux_residual`` convs and the output convs (``dec.*_aux_conv`` / ``out_conv``).

Measured with our configs (class-conditional): ``cifar10-ncsnpp`` 84.40% of 56.4M parameters (the paper:
about 84%; the abstract rounds to 85%), ``cifar10-ddpmpp`` 85.40% of 55.7M, ``imagenet64-adm`` 78.77% of 295.9M,
``fmnist`` 82.33% of 1.26M.

Two partial modes, ours (not the paper's), for ablating the frozen set: ``d2o-f-encoder`` applies the rule in the
encoder only (``.enc.`` names; the decoder's convs train) and ``d2o-f-decoder`` in the decoder only (``.dec.``).
On ``fmnist`` they freeze 19.39% and 62.94% of the parameters, on ``cifar10-ncsnpp`` 29.24% and 55.16%.
A wider mode, also ours, ``d2o-f-plus``, freezes the same blocks' 1x1 ``skip`` convs and attention ``qkv`` as well,
so that only the group norms, the embeddings, the ``affine`` layers and the input/output convs train: 89.41% of
``fmnist``'s parameters frozen, 90.46% of ``cifar10-ncsnpp``'s (it asks whether freezing more keeps more of the
teacher's diversity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

FREEZE_MODES = ("none", "d2o-f", "d2o-f-encoder", "d2o-f-decoder", "d2o-f-plus")
_WHERE = re.compile(r"block|up|down|in")
_WHAT = re.compile(r"conv|proj")
#: What ``d2o-f-plus`` freezes in the same places, beyond D2O-F's convs and projections.
_WHAT_PLUS = re.compile(r"conv|proj|skip|qkv")
#: The part of the U-Net a partial mode restricts the D2O-F rule to (a name component, as in ``model.enc.*``).
_SCOPE = {"d2o-f-encoder": "enc", "d2o-f-decoder": "dec"}


def is_frozen_d2o_f(name: str) -> bool:
    """The D2O-F rule on one parameter name."""
    return bool(_WHERE.search(name)) and bool(_WHAT.search(name))


def _frozen_in_mode(name: str, mode: str) -> bool:
    if mode == "d2o-f-plus":
        return bool(_WHERE.search(name)) and bool(_WHAT_PLUS.search(name))
    scope = _SCOPE.get(mode)
    return is_frozen_d2o_f(name) and (scope is None or scope in name.split("."))


@dataclass(frozen=True)
class FreezeReport:
    mode: str
    frozen_params: int
    total_params: int
    frozen_tensors: int
    total_tensors: int

    @property
    def fraction(self) -> float:
        return self.frozen_params / max(self.total_params, 1)

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(
            mode=self.mode,
            frozen_params=self.frozen_params,
            total_params=self.total_params,
            frozen_tensors=self.frozen_tensors,
            total_tensors=self.total_tensors,
            frozen_fraction=round(self.fraction, 6),
        )

    def __str__(self) -> str:
        return (
            f"freeze {self.mode}: {self.frozen_params:,} of {self.total_params:,} parameters frozen "
            f"({100 * self.fraction:.2f}%, {self.frozen_tensors} of {self.total_tensors} tensors)"
        )


def frozen_names(module: nn.Module, mode: str) -> list[str]:
    """Names of the parameters ``mode`` freezes (names as ``module.named_parameters()`` gives them)."""
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze mode must be one of {FREEZE_MODES}, got {mode!r}")
    if mode == "none":
        return []
    return [name for name, _ in module.named_parameters() if _frozen_in_mode(name, mode)]


def apply_freeze(module: nn.Module, mode: str) -> FreezeReport:
    """Set ``requires_grad`` per ``mode`` (every other parameter becomes trainable) and report the split.

    Call it on the preconditioner (D2OPrecond) so that names carry EDM's ``model.`` prefix; the rule does not
    depend on that prefix.
    """
    frozen = set(frozen_names(module, mode))
    n_frozen = n_total = t_frozen = t_total = 0
    for name, p in module.named_parameters():
        is_frozen = name in frozen
        p.requires_grad_(not is_frozen)
        n_total += p.numel()
        t_total += 1
        if is_frozen:
            n_frozen += p.numel()
            t_frozen += 1
    return FreezeReport(mode, n_frozen, n_total, t_frozen, t_total)
