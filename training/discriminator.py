"""Discriminators for the D2O fine-tune: a frozen feature backbone with trainable spectral-norm heads.

``D(x, y)`` returns one logit per feature level, ``[N, L]``; the GAN losses sum over levels (as the paper's
multi-head discriminator does). Each head is class-conditional by projection (Miyato & Koyama 2018):
``logit = w . phi(h) + <embed(y), phi(h)>`` with ``phi`` two spectral-norm 3x3 convs and a spatial mean.
With ``class_projection=False`` the heads drop the ``<embed(y), phi(h)>`` term: the class then reaches D only
through its backbone (the teacher encoder's class embedding; the other backbones ignore it, so D is
unconditional). The projection term rewards samples whose features align with their class's embedding, a pull
toward class-typical images that may cost coverage within a class.
With ``mbstd_group`` > 0 each head also sees how much its features vary across a small group of samples
(the minibatch standard deviation of Karras et al. 2018, a remedy for mode collapse): a generator that draws
the same image for different noise shows a spread below the reals'. D's output for one sample then depends on
its group, so reals and fakes that share a forward say so with ``segments=2`` and never share a group.

Backbones (all return a list of feature maps and are frozen, always in eval mode, unless noted):

- ``TeacherEncoder``: the teacher U-Net's own encoder (``model.embed`` + ``model.encode``), the default. The
  encoder is a denoiser's: it expects ``c_in(sigma) * x`` and the noise label ``c_noise(sigma)``. D sees clean
  images, so we evaluate it at fixed small noise levels, with no noise added (deterministic, so a data-parallel
  step equals a single-process one). Default sigmas (0.1, 1.0): at 0.1 a clean image is almost in-distribution
  (the teacher expects variance 0.5^2 + 0.1^2) and the features follow fine detail, where one-step outputs
  differ most (the paper's frequency analysis); at 1.0 the encoder works on coarse structure and class. The
  class label goes into the encoder's embedding as in pre-training. Taps: the last activation at each
  resolution, per sigma.
- ``VGGBackbone``: a torchvision-layout VGG (keys ``features.N.*``), so ImageNet weights (e.g. ``vgg16_bn``)
  saved as safetensors plug in as the paper's backbones do. Taps: the activation before each max-pool.
- ``ClassifierBackbone``: one of our own classifiers (``python -m training.evaluate train-classifier``), the
  analogue of the paper's ImageNet classifiers (Projected GAN) for a data set that has none: a discriminative
  feature net trained on the data's labels. Taps: the end of each residual stage. Train it apart from the
  evaluation classifier (another ``--seed`` and ``--out``): a D that shares the evaluation's feature space would
  flatter FD.
- ``ScratchTrunk`` (``--disc scratch``): a small trainable spectral-norm conv net, the from-scratch ablation.

``load_backbone(weights.safetensors, config.json)`` builds a pluggable backbone; the config formats are in
``docs/reproduce.md`` and in ``load_backbone``'s docstring.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from training.checkpoint import CheckpointError, build_precond, load_state_dict_file
from training.precond import EDMPrecond
from training.sampling import one_hot

DEFAULT_SIGMAS = (0.1, 1.0)


class FrozenBackbone(nn.Module):
    """Base for frozen feature networks: no gradients for their weights, eval mode whatever ``train()`` says."""

    channels: list[int]
    frozen = True

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError


def _last_per_resolution(names: Sequence[str]) -> list[int]:
    """Index of the last encoder output at each resolution, from EDM's ``RxR_...`` module names."""
    taps: dict[str, int] = {}
    for i, name in enumerate(names):
        taps[name.split("_")[0]] = i
    return sorted(taps.values())


class TeacherEncoder(FrozenBackbone):
    """The encoder half of an EDM U-Net at fixed noise levels (see the module docstring)."""

    def __init__(self, denoiser: EDMPrecond, sigmas: Sequence[float] = DEFAULT_SIGMAS):
        super().__init__()
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ValueError(f"backbone sigmas must be positive, got {list(sigmas)}")
        self.denoiser = denoiser
        self.sigmas = [float(s) for s in sigmas]
        model = denoiser.model
        names = [n for n in model.enc if "aux" not in n]
        self.taps = _last_per_resolution(names)
        per_sigma = [model.enc[names[i]].out_channels for i in self.taps]
        self.channels = per_sigma * len(self.sigmas)
        self.freeze()

    @property
    def label_dim(self) -> int:
        return self.denoiser.label_dim

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        net = self.denoiser
        n = x.shape[0]
        onehot = one_hot(labels, net.label_dim) if net.label_dim else None
        if net.label_dim and onehot is None:
            onehot = torch.zeros(n, net.label_dim, device=x.device)
        feats = []
        for s in self.sigmas:
            sigma = torch.full((n, 1, 1, 1), s, device=x.device)
            _, _, c_in, c_noise = net.coefficients(sigma)
            emb = net.model.embed(c_noise.flatten(), onehot, None)
            skips = net.model.encode(c_in * x, emb)
            feats += [skips[i] for i in self.taps]
        return feats


class VGGBackbone(FrozenBackbone):
    """A VGG feature stack in torchvision's layout: ``features`` = Conv3x3 [BatchNorm] ReLU ... MaxPool2d."""

    def __init__(
        self,
        layers: Sequence[int | str],
        batch_norm: bool = True,
        in_channels: int = 3,
        resize: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        stages: Sequence[int] | None = None,
    ):
        super().__init__()
        mods: list[nn.Module] = []
        taps: list[int] = []
        chans: list[int] = []
        c = in_channels
        for item in layers:
            if item == "M":
                taps.append(len(mods) - 1)
                chans.append(c)
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods.append(nn.Conv2d(c, int(item), 3, padding=1))
                if batch_norm:
                    mods.append(nn.BatchNorm2d(int(item)))
                mods.append(nn.ReLU(inplace=False))
                c = int(item)
        if mods and not isinstance(mods[-1], nn.MaxPool2d):
            taps.append(len(mods) - 1)
            chans.append(c)
        keep = list(range(len(taps))) if stages is None else list(stages)
        if any(not 0 <= s < len(taps) for s in keep):
            raise ValueError(f"VGG stages {keep} out of range: the config has {len(taps)} stages")
        self.features = nn.Sequential(*mods)
        self.in_channels = in_channels
        self.taps = [taps[s] for s in keep]
        self.channels = [chans[s] for s in keep]
        self.resize = resize
        self.register_buffer("mean", torch.tensor(list(mean)).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).reshape(1, -1, 1, 1), persistent=False)
        self.freeze()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = (x + 1) / 2  # [-1, 1] -> [0, 1], then ImageNet normalization
        x = (x - self.mean) / self.std
        if self.resize and x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        feats = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
            if i == last:
                break
        return feats


class ClassifierBackbone(FrozenBackbone):
    """The stem and residual stages of a ``training.evaluation.classifier.Classifier`` (images in [-1, 1], as D
    sees them); the class label is not used. ``net`` is the whole classifier, so its files load as they are."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        config = net.config
        self.taps = [sum(config.blocks[: i + 1]) - 1 for i in range(len(config.blocks))]
        self.channels = list(config.widths)
        self.freeze()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        h = self.net.stem(self.net.prepare(x))
        feats = []
        for i, block in enumerate(self.net.stages):
            h = block(h)
            if i in self.taps:
                feats.append(h)
        return feats


class ScratchTrunk(nn.Module):
    """A small trainable conv net on pixels: stride-2 spectral-norm convs down to 8x8 (or the input size)."""

    frozen = False

    def __init__(self, img_channels: int, img_resolution: int, width: int = 64, max_width: int = 256):
        super().__init__()
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(img_channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        c, res = width, img_resolution
        while res > 8:
            c_out = min(c * 2, max_width)
            layers += [spectral_norm(nn.Conv2d(c, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c, res = c_out, res // 2
        self.net = nn.Sequential(*layers)
        self.channels = [c]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        return [self.net(x)]


def minibatch_stddev(h: torch.Tensor, group: int, segments: int = 1) -> torch.Tensor:
    """``h`` [N, C, H, W] with one more channel: the spread of ``h`` across the sample's group.

    A group is a run of consecutive samples inside one of ``segments`` equal parts of the batch, of size
    gcd(part size, ``group``) (1: no spread to see). Per group: the standard deviation over its members of every
    feature, averaged over channels and positions, one number broadcast to every member and position.
    """
    n, c, height, width = h.shape
    if segments < 1 or n % segments:
        raise ValueError(f"a batch of {n} does not split into {segments} equal segments")
    size = math.gcd(n // segments, group)
    spread = h.reshape(n // size, size, c, height, width).var(dim=1, unbiased=False).add(1e-8).sqrt()
    per_group = spread.mean(dim=(1, 2, 3))
    channel = per_group.repeat_interleave(size).reshape(n, 1, 1, 1).expand(n, 1, height, width)
    return torch.cat([h, channel.to(h.dtype)], dim=1)


class ProjectionHead(nn.Module):
    """Two spectral-norm 3x3 convs, spatial mean, then a linear logit plus a class projection; with
    ``mbstd_group`` > 0 the second conv also gets the group's minibatch standard deviation."""

    def __init__(self, in_channels: int, width: int, label_dim: int, mbstd_group: int = 0):
        super().__init__()
        self.mbstd_group = mbstd_group
        self.conv0 = spectral_norm(nn.Conv2d(in_channels, width, 3, padding=1))
        self.conv1 = spectral_norm(nn.Conv2d(width + (1 if mbstd_group else 0), width, 3, padding=1))
        self.out = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Embedding(label_dim, width)) if label_dim else None

    def forward(self, feat: torch.Tensor, labels: torch.Tensor | None, segments: int = 1) -> torch.Tensor:
        h = F.leaky_relu(self.conv0(feat), 0.2)
        if self.mbstd_group:
            h = minibatch_stddev(h, self.mbstd_group, segments)
        h = F.leaky_relu(self.conv1(h), 0.2).mean(dim=(2, 3))
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels.long()) * h).sum(dim=1)
        return logit


class Discriminator(nn.Module):
    """``backbone`` features -> one projection head per level -> logits [N, L]."""

    def __init__(
        self,
        backbone: nn.Module,
        label_dim: int,
        width: int = 64,
        mbstd_group: int = 0,
        class_projection: bool = True,
    ):
        super().__init__()
        if mbstd_group < 0:
            raise ValueError(f"mbstd_group must be >= 0 (0 = off), got {mbstd_group}")
        self.backbone = backbone
        self.label_dim = label_dim
        head_labels = label_dim if class_projection else 0
        self.heads = nn.ModuleList(ProjectionHead(c, width, head_labels, mbstd_group) for c in backbone.channels)

    @property
    def backbone_frozen(self) -> bool:
        return bool(getattr(self.backbone, "frozen", False))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, segments: int = 1) -> torch.Tensor:
        """Logits [N, L]. ``segments``: the batch is that many equal parts (reals, fakes) that must not share
        a minibatch-stddev group; without ``mbstd_group`` samples are judged one by one and it changes nothing."""
        if self.label_dim and labels is None:
            raise ValueError("this discriminator is class-conditional: labels are required")
        feats = self.backbone(x, labels)
        return torch.stack([head(f, labels, segments) for head, f in zip(self.heads, feats, strict=True)], dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Heads (and a trainable trunk), spectral-norm power-iteration vectors included; no frozen backbone."""
        state = self.state_dict()
        if self.backbone_frozen:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (self.backbone_frozen and k.startswith("backbone."))]
        if missing or unexpected:
            raise CheckpointError(f"discriminator state does not fit: missing {missing}, unexpected {unexpected}")


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------- pluggable backbones


VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: backbone config not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def build_backbone(cfg: dict[str, Any], source: str = "backbone config") -> FrozenBackbone:
    """A backbone from its JSON description (weights not loaded). See ``load_backbone``."""
    kind = cfg.get("type", {"denoiser": "edm-encoder", "classifier": "classifier"}.get(cfg.get("kind", "")))
    if kind == "edm-encoder":
        if "precond_kwargs" not in cfg:
            raise CheckpointError(f"{source}: edm-encoder needs 'precond_kwargs' (as in a model dir's config.json)")
        net = build_precond(cfg.get("precond", "edm"), cfg["precond_kwargs"])
        return TeacherEncoder(net, cfg.get("sigmas", DEFAULT_SIGMAS))
    if kind == "vgg":
        layers = cfg.get("layers", "vgg16")
        if isinstance(layers, str):
            if layers not in VGG_LAYOUTS:
                raise CheckpointError(f"{source}: unknown VGG layout {layers!r}; use one of {sorted(VGG_LAYOUTS)}")
            layers = VGG_LAYOUTS[layers]
        kw = {k: cfg[k] for k in ("batch_norm", "in_channels", "resize", "mean", "std", "stages") if k in cfg}
        return VGGBackbone(layers, **kw)
    if kind == "classifier":
        from training.evaluation.classifier import classifier_from_architecture

        return ClassifierBackbone(classifier_from_architecture(cfg.get("architecture"), source))
    raise CheckpointError(f"{source}: 'type' must be 'edm-encoder', 'vgg' or 'classifier', got {kind!r}")


def load_backbone(weights: str | Path, config: str | Path) -> FrozenBackbone:
    """A frozen feature backbone from a local safetensors file and a JSON config.

    Config formats:

    - ``{"type": "edm-encoder", "precond": "edm", "precond_kwargs": {...}, "sigmas": [0.1, 1.0]}``: the encoder of
      any of our U-Nets; a model dir's own ``config.json`` (kind ``denoiser``) works as it is, with its
      ``denoiser.safetensors`` as the weights.
    - ``{"type": "vgg", "layers": "vgg16" | [64, 64, "M", ...], "batch_norm": true, "resize": 224, "stages": [1, 2,
      3, 4]}``: torchvision's VGG layout and key names (``features.N.weight``), e.g. ImageNet ``vgg16_bn``
      weights saved with ``safetensors.torch.save_file(vgg.state_dict(), ...)``; ``classifier.*`` keys are
      ignored. Inputs are mapped from [-1, 1] to ImageNet normalization; gray images are repeated to RGB.
    - a classifier dir's own ``config.json`` (kind ``classifier``, from ``python -m training.evaluate
      train-classifier``) with its ``classifier.safetensors``; or ``{"type": "classifier", "architecture": {...}}``.
    """
    weights, config = Path(weights), Path(config)
    cfg = _load_json(config)
    backbone = build_backbone(cfg, str(config))
    state = load_state_dict_file(weights)
    if isinstance(backbone, VGGBackbone):
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        target: nn.Module = backbone
    elif isinstance(backbone, ClassifierBackbone):
        target = backbone.net
    else:
        target = backbone.denoiser
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit {config} ({e})") from e
    backbone.freeze()
    return backbone


# ---------------------------------------------------------------- feature distance (distillation)


def feature_distance(backbone: FrozenBackbone, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None):
    """LPIPS-like distance per sample: channel-normalized features, squared difference, spatial mean, level mean."""
    fa, fb = backbone(a, labels), backbone(b, labels)
    total = torch.zeros(a.shape[0], device=a.device)
    for x, y in zip(fa, fb, strict=True):
        x = x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-8)
        y = y / (y.square().sum(dim=1, keepdim=True).sqrt() + 1e-8)
        total = total + (x - y).square().sum(dim=1).mean(dim=(1, 2))
    return total / len(fa)


def build_discriminator(
    kind: str,
    *,
    teacher: EDMPrecond | None,
    img_channels: int,
    img_resolution: int,
    label_dim: int,
    width: int = 64,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    backbone_weights: str | Path | None = None,
    backbone_config: str | Path | None = None,
    mbstd_group: int = 0,
    class_projection: bool = True,
) -> Discriminator:
    """``kind``: 'teacher' (frozen teacher encoder), 'scratch', or 'backbone' (pluggable, from files);
    ``mbstd_group``: the heads' minibatch-stddev group size (0: off); ``class_projection``: the heads' class
    projection term (off: the class reaches D through the backbone only)."""
    if kind == "teacher":
        if teacher is None:
            raise ValueError("--disc teacher needs the teacher network")
        backbone: nn.Module = TeacherEncoder(teacher, sigmas)
    elif kind == "scratch":
        backbone = ScratchTrunk(img_channels, img_resolution, width=width)
    elif kind == "backbone":
        if not backbone_weights or not backbone_config:
            raise ValueError("a pluggable backbone needs --disc-backbone FILE.safetensors and --disc-backbone-config")
        backbone = load_backbone(backbone_weights, backbone_config)
    else:
        raise ValueError(f"unknown discriminator {kind!r}; expected teacher, scratch or backbone")
    return Discriminator(backbone, label_dim, width=width, mbstd_group=mbstd_group, class_projection=class_projection)


__all__ = [
    "DEFAULT_SIGMAS",
    "ClassifierBackbone",
    "Discriminator",
    "FrozenBackbone",
    "ProjectionHead",
    "ScratchTrunk",
    "TeacherEncoder",
    "VGGBackbone",
    "build_backbone",
    "build_discriminator",
    "count_trainable",
    "feature_distance",
    "load_backbone",
    "minibatch_stddev",
]
