"""The U-Net denoisers: ``SongUNet`` (DDPM++ / NCSN++) and ``DhariwalUNet`` (ADM), with EDM's interface.

This is the project's own implementation, written from the published description of the architectures (Song et
al. 2021, Dhariwal & Nichol 2021, as configured by Karras et al. 2022 "EDM") and from a list of EDM's interface
facts: constructor arguments, parameter and buffer names and shapes, and the order of operations. Those names and
arguments are kept so that EDM's state dicts and checkpoints load as they are (``strict=True``, no key map) and give
EDM's float32 outputs to about 1e-5 (``tests/training/test_networks.py`` checks that against outputs of EDM's own
code). The structure here is ours: torch's ``nn.Linear`` / ``nn.Conv2d`` / ``nn.GroupNorm`` and
``F.scaled_dot_product_attention`` do the work.

Layout, as EDM names it:

- mapping network ``map_noise`` / ``map_label`` / ``map_augment`` / ``map_layer0`` / ``map_layer1``: the noise
  label ``c_noise`` (and class / augmentation labels) to the embedding ``emb`` that every block reads;
- ``enc`` and ``dec``, ``nn.ModuleDict``s in forward order with keys ``{R}x{R}_conv`` / ``_down`` / ``_block{i}`` /
  ``_in0`` / ``_in1`` / ``_up`` and the SongUNet ``_aux_*`` entries; each decoder ``_block{i}`` concatenates one
  encoder activation (a "skip");
- the output: SongUNet sums its ``aux`` branch (``dec.*_aux_norm``/``_aux_conv``), DhariwalUNet has ``out_norm`` and
  ``out_conv``.

Besides ``forward`` each U-Net exposes ``embed`` (the mapping network) and ``encode`` (the encoder, returning the
skip activations), which the teacher-encoder discriminator uses.

Every layer casts its float32 parameters to the input's dtype where it uses them, so the network runs in float16
or bfloat16 on low-precision inputs while the parameters (and the embedding, computed from float32 noise labels)
stay float32; attention scores are always computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- initialisation (training from scratch only)


def init_layer_(
    layer: nn.Module, init_mode: str = "xavier_uniform", init_weight: float = 1.0, init_bias: float = 0.0
) -> None:
    """Initialise ``layer.weight`` and ``layer.bias`` in place.

    ``init_mode`` is the distribution, with fan_in = in * k * k and fan_out = out * k * k:

    - ``xavier_uniform``: U(-b, b), b = sqrt(6 / (fan_in + fan_out)); DDPM++/NCSN++ (``default_init``);
    - ``kaiming_uniform``: U(-b, b), b = sqrt(3 / fan_in); with scale sqrt(1/3) this is PyTorch's default layer
      init, which ADM trains from;
    - ``normal``: N(0, 1), as ADM's class embedding table.

    The weight is a draw times ``init_weight``, the bias an independent draw of the same distribution times
    ``init_bias``; a scale of 0 gives zeros.
    """
    weight, bias = layer.weight, getattr(layer, "bias", None)
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bounds = {"xavier_uniform": math.sqrt(6 / (fan_in + fan_out)), "kaiming_uniform": math.sqrt(3 / fan_in)}
    if init_mode not in bounds and init_mode != "normal":
        raise ValueError(f"init_mode must be one of {sorted(bounds) + ['normal']}, got {init_mode!r}")
    with torch.no_grad():
        for tensor, scale in ((weight, init_weight), (bias, init_bias)):
            if tensor is None:
                continue
            if scale == 0:
                tensor.zero_()
                continue
            if init_mode == "normal":
                tensor.normal_()
            else:
                tensor.uniform_(-bounds[init_mode], bounds[init_mode])
            tensor.mul_(scale)


# ---------------------------------------------------------------- layers


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` that runs in the input's dtype; ``init`` goes to :func:`init_layer_`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **init: Any):
        super().__init__(in_features, out_features, bias=bias)
        init_layer_(self, **init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), _cast(self.bias, x))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with min(32, C // 4) groups, running in the input's dtype."""

    def __init__(self, num_channels: int, eps: float = 1e-5, max_groups: int = 32, min_channels_per_group: int = 4):
        super().__init__(min(max_groups, num_channels // min_channels_per_group), num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)


def fir_filter(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D resampling kernel [1, 1, L, L]: outer(f, f) / sum(f)^2."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square()).reshape(1, 1, len(taps), len(taps))


def resample(x: torch.Tensor, kernel: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
    """Per-channel 2x up- (transposed, gain 4) or down-sampling of ``x`` by ``kernel`` [1, 1, L, L]."""
    channels = x.shape[1]
    k = kernel.to(x.dtype).tile(channels, 1, 1, 1)
    if up:
        return F.conv_transpose2d(x, k * 4, stride=2, padding=padding, groups=channels)
    return F.conv2d(x, k, stride=2, padding=padding, groups=channels)


class Resample(nn.Module):
    """Parameter-free 2x up- or down-sampling; its only state is the ``resample_filter`` buffer.

    This is what EDM calls a 0x0 convolution: the Song U-Net's ``aux_down``/``aux_up`` and the identity skips of
    ADM's resampling blocks.
    """

    def __init__(self, channels: int, up: bool = False, down: bool = False, resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        if up == down:
            raise ValueError("Resample needs exactly one of up, down")
        self.in_channels = self.out_channels = channels
        self.up = up
        self.register_buffer("resample_filter", fir_filter(resample_filter))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resample(x, self.resample_filter, self.up, (self.resample_filter.shape[-1] - 1) // 2)


class Conv2d(nn.Conv2d):
    """A 'same'-padded ``nn.Conv2d`` (odd kernel) that may resample its input 2x first, in the input's dtype.

    With ``up`` or ``down`` the ``resample_filter`` buffer is applied before the convolution. ``fused_resample``
    (down only, NCSN++'s ``aux_residual``) convolves first, with the padding widened by (L - 1) // 2, then
    downsamples without padding; the bias is added last.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        **init: Any,
    ):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Conv2d needs an odd kernel size (use Resample for 0), got {kernel}")
        if up and down:
            raise ValueError("Conv2d cannot both up- and downsample")
        if fused_resample and not down:
            raise ValueError("fused_resample is implemented for downsampling only")
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)
        self.up, self.down, self.fused_resample = up, down, fused_resample
        if up or down:
            self.register_buffer("resample_filter", fir_filter(resample_filter))
        init_layer_(self, **init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(x.dtype), _cast(self.bias, x)
        if not (self.up or self.down):
            return F.conv2d(x, weight, bias, padding=self.padding)
        fir = self.resample_filter
        pad = (fir.shape[-1] - 1) // 2
        if not self.fused_resample:
            return F.conv2d(resample(x, fir, self.up, pad), weight, bias, padding=self.padding)
        x = resample(F.conv2d(x, weight, padding=self.padding[0] + pad), fir, up=False, padding=0)
        return x if bias is None else x + bias.reshape(1, -1, 1, 1)


# ---------------------------------------------------------------- noise-level embeddings


class _SinusoidalEmbedding(nn.Module):
    """Features cos(x f) and sin(x f) of a batch of scalars x [N] -> [N, num_channels]."""

    def __init__(self, num_channels: int, sin_first: bool):
        super().__init__()
        self.num_channels = num_channels
        self.sin_first = sin_first  # SongUNet orders the halves [sin, cos], ADM [cos, sin]

    def frequencies(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, self.frequencies(x).to(x.dtype))
        halves = (angles.sin(), angles.cos()) if self.sin_first else (angles.cos(), angles.sin())
        return torch.cat(halves, dim=1)


class PositionalEmbedding(_SinusoidalEmbedding):
    """Transformer-style frequencies (1 / max_positions) ** (i / (n/2 - endpoint)), i < n/2; no state."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False, sin_first: bool = False):
        super().__init__(num_channels, sin_first)
        self.max_positions = max_positions
        self.endpoint = endpoint

    def frequencies(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        steps = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        return (1 / self.max_positions) ** steps


class FourierEmbedding(_SinusoidalEmbedding):
    """Random Fourier features (NCSN++): angular frequencies 2 pi * ``freqs``, a buffer drawn N(0, scale^2)."""

    def __init__(self, num_channels: int, scale: float = 16, sin_first: bool = False):
        super().__init__(num_channels, sin_first)
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def frequencies(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * math.pi * self.freqs


# ---------------------------------------------------------------- the residual block


class UNetBlock(nn.Module):
    """Pre-activation residual block conditioned on ``emb``, optionally resampling and with self-attention.

    conv0 (3x3, carries the up/down) -> emb added (``adaptive_scale=False``) or as scale and shift of the second
    norm -> dropout -> conv1 (3x3), plus the skip path; the sum times ``skip_scale``. With attention
    (``num_heads`` > 0; by default out_channels // channels_per_head) a multi-head self-attention residual follows.
    ``init``/``init_zero``/``init_attn`` are :func:`init_layer_` keywords for the ordinary layers, for conv1 and
    the output projection, and for qkv (default: ``init``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        init_attn = init if init_attn is None else dict(init_attn)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        if self.num_heads and out_channels % self.num_heads:
            raise ValueError(f"{out_channels} channels do not split into {self.num_heads} heads")
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        sampling = dict(up=up, down=down, resample_filter=resample_filter)

        # Registration order = EDM's state-dict order.
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **sampling, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        skip: nn.Module | None = None
        if in_channels != out_channels or (resample_proj and (up or down)):
            skip = Conv2d(in_channels, out_channels, 1, **sampling, **init)
        elif up or down:
            skip = Resample(out_channels, **sampling)
        self.skip = skip
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        cond = self.affine(emb).to(h.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = cond.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + cond))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self.attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the H*W positions, scores in float32.

        The qkv conv's output channels are interleaved: channel ``(head * d + c) * 3 + j`` is channel c of head
        ``head``'s query (j = 0), key (1) or value (2), d = C / heads. The result's channel ``head * d + c``.
        """
        n, c, height, width = x.shape
        qkv = self.qkv(x).reshape(n, self.num_heads, c // self.num_heads, 3, height * width)
        q, k, v = (t.transpose(2, 3).float() for t in qkv.unbind(3))  # [N, heads, H*W, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(2, 3).reshape(n, c, height, width).to(x.dtype)


# ---------------------------------------------------------------- U-Net plumbing shared by both architectures

# Roles of the entries of ``enc`` / ``dec``, fixed when the network is built.
_INPUT, _BLOCK, _BLOCK_SKIP = "input", "block", "block+skip"
_AUX_DOWN, _AUX_SKIP, _AUX_RESIDUAL = "aux_down", "aux_skip", "aux_residual"
_AUX_UP, _AUX_NORM, _AUX_CONV = "aux_up", "aux_norm", "aux_conv"


class _UNet(nn.Module):
    """embed -> encode -> decode -> output; subclasses build ``enc``/``dec`` with :meth:`_add` and the mapping."""

    enc: nn.ModuleDict
    dec: nn.ModuleDict
    label_dim: int
    label_dropout: float
    map_label: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.roles: dict[str, str] = {}  # "enc.<name>" / "dec.<name>" -> role

    def _start_unet(self) -> None:
        """Create ``enc`` and ``dec``: after the mapping network, whose parameters come first in EDM's order."""
        self.enc = nn.ModuleDict()
        self.dec = nn.ModuleDict()

    def _add(self, part: str, name: str, module: nn.Module, role: str) -> None:
        getattr(self, part)[name] = module
        self.roles[f"{part}.{name}"] = role

    def _class_labels(self, class_labels: torch.Tensor | None) -> torch.Tensor:
        """[N, label_dim] labels for ``map_label``; in training whole rows are zeroed with p = label_dropout."""
        if class_labels is None:
            raise ValueError(f"class_labels are required: the network is conditional (label_dim={self.label_dim})")
        if self.training and self.label_dropout:
            keep = torch.rand([class_labels.shape[0], 1], device=class_labels.device) >= self.label_dropout
            class_labels = class_labels * keep.to(class_labels.dtype)
        return class_labels

    def embed(
        self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's activations, one per non-aux ``enc`` entry in order; the last is the deepest."""
        skips: list[torch.Tensor] = []
        aux = x
        for name, module in self.enc.items():
            role = self.roles[f"enc.{name}"]
            if role == _AUX_DOWN:
                aux = module(aux)
            elif role == _AUX_SKIP:
                x = x + module(aux)
                skips[-1] = x
            elif role == _AUX_RESIDUAL:
                x = aux = (x + module(aux)) / math.sqrt(2)
                skips[-1] = x
            else:
                x = module(x) if role == _INPUT else module(x, emb)
                skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        """The decoder and output head from :meth:`encode`'s activations (used deepest first; the list is kept)."""
        skips = list(skips)
        x = skips[-1]
        aux: torch.Tensor | None = None
        tmp: torch.Tensor | None = None
        for name, module in self.dec.items():
            role = self.roles[f"dec.{name}"]
            if role == _AUX_UP:
                aux = module(aux)
            elif role == _AUX_NORM:
                tmp = module(x)
            elif role == _AUX_CONV:
                tmp = module(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if role == _BLOCK_SKIP:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return self.output(x, aux)

    def output(self, x: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels, augment_labels)
        return self.decode(self.encode(x, emb), emb)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------- DDPM++ / NCSN++


class SongUNet(_UNet):
    """DDPM++ (positional embedding, standard encoder/decoder) and NCSN++ (Fourier embedding, residual encoder,
    [1, 3, 3, 1] resampling) U-Nets of Song et al. 2021, with EDM's constructor arguments and names.

    Blocks use scale-free emb addition, skip scale sqrt(1/2), GroupNorm eps 1e-6, one attention head, and 1x1
    resampling skips. ``enc.{R}x{R}_conv`` maps to ``model_channels``; ``dec.*_aux_norm``/``_aux_conv`` produce
    the output (at every level, upsampled and summed, for ``decoder_type='skip'``).
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ):
        _check_choice("embedding_type", embedding_type, ("positional", "fourier"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        # DDPM++/NCSN++ init: xavier-uniform, biases zero; its "zero" layers (conv1, the attention output and the
        # output convs) are xavier with variance scale 1e-10, i.e. weights times 1e-5, so emb reaches the output.
        xavier = dict(init_mode="xavier_uniform")
        near_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        blocks = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=xavier,
            init_zero=near_zero,
        )

        # Mapping network (EDM's registration order).
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True, sin_first=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, **xavier) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **xavier) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **xavier)
        self.map_layer1 = Linear(emb_channels, emb_channels, **xavier)

        self._start_unet()
        # Encoder. ``aux_channels``: channels of the image-resolution side branch of the skip/residual encoders.
        cout = aux_channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                self._add("enc", f"{tag}_conv", Conv2d(cout, model_channels, 3, **xavier), _INPUT)
                cout = model_channels
            else:
                self._add("enc", f"{tag}_down", UNetBlock(cout, cout, down=True, **blocks), _BLOCK)
                if encoder_type == "skip":
                    down = Resample(aux_channels, down=True, resample_filter=resample_filter)
                    self._add("enc", f"{tag}_aux_down", down, _AUX_DOWN)
                    self._add("enc", f"{tag}_aux_skip", Conv2d(aux_channels, cout, 1, **xavier), _AUX_SKIP)
                elif encoder_type == "residual":
                    conv = Conv2d(
                        aux_channels, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True, **xavier
                    )
                    self._add("enc", f"{tag}_aux_residual", conv, _AUX_RESIDUAL)
                    aux_channels = cout
            for i in range(num_blocks):
                block = UNetBlock(cout, model_channels * mult, attention=res in attn_resolutions, **blocks)
                self._add("enc", f"{tag}_block{i}", block, _BLOCK)
                cout = model_channels * mult

        # Decoder.
        skip_channels = [m.out_channels for n, m in self.enc.items() if self.roles[f"enc.{n}"] in (_INPUT, _BLOCK)]
        last = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == last:
                self._add("dec", f"{tag}_in0", UNetBlock(cout, cout, attention=True, **blocks), _BLOCK)
                self._add("dec", f"{tag}_in1", UNetBlock(cout, cout, **blocks), _BLOCK)
            else:
                self._add("dec", f"{tag}_up", UNetBlock(cout, cout, up=True, **blocks), _BLOCK)
            for i in range(num_blocks + 1):
                attention = i == num_blocks and res in attn_resolutions
                block = UNetBlock(cout + skip_channels.pop(), model_channels * mult, attention=attention, **blocks)
                self._add("dec", f"{tag}_block{i}", block, _BLOCK_SKIP)
                cout = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    up = Resample(out_channels, up=True, resample_filter=resample_filter)
                    self._add("dec", f"{tag}_aux_up", up, _AUX_UP)
                self._add("dec", f"{tag}_aux_norm", GroupNorm(cout, eps=1e-6), _AUX_NORM)
                self._add("dec", f"{tag}_aux_conv", Conv2d(cout, out_channels, 3, **near_zero), _AUX_CONV)

    def embed(
        self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            emb = emb + self.map_label(self._class_labels(class_labels) * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def output(self, x: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        assert aux is not None
        return aux


# ---------------------------------------------------------------- ADM


class DhariwalUNet(_UNet):
    """The ADM U-Net of Dhariwal & Nichol 2021 with EDM's constructor arguments and names.

    Blocks use adaptive group-norm scale/shift from ``emb``, 64 channels per attention head (at every block of an
    attention resolution), identity (buffer-only) resampling skips; the class label enters after the two mapping
    layers; output ``out_conv(silu(out_norm(x)))``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        # PyTorch's default layer init (what ADM trains from): weight and bias U(+-1/sqrt(fan_in)).
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        zero = dict(init_weight=0, init_bias=0)
        blocks = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=zero)

        # Mapping network (EDM's registration order).
        self.map_noise = PositionalEmbedding(model_channels, endpoint=False)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="normal") if label_dim else None

        self._start_unet()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                self._add("enc", f"{tag}_conv", Conv2d(cout, model_channels * mult, 3, **init), _INPUT)
                cout = model_channels * mult
            else:
                self._add("enc", f"{tag}_down", UNetBlock(cout, cout, down=True, **blocks), _BLOCK)
            for i in range(num_blocks):
                block = UNetBlock(cout, model_channels * mult, attention=res in attn_resolutions, **blocks)
                self._add("enc", f"{tag}_block{i}", block, _BLOCK)
                cout = model_channels * mult

        skip_channels = [m.out_channels for m in self.enc.values()]
        last = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == last:
                self._add("dec", f"{tag}_in0", UNetBlock(cout, cout, attention=True, **blocks), _BLOCK)
                self._add("dec", f"{tag}_in1", UNetBlock(cout, cout, **blocks), _BLOCK)
            else:
                self._add("dec", f"{tag}_up", UNetBlock(cout, cout, up=True, **blocks), _BLOCK)
            for i in range(num_blocks + 1):
                block = UNetBlock(
                    cout + skip_channels.pop(), model_channels * mult, attention=res in attn_resolutions, **blocks
                )
                self._add("dec", f"{tag}_block{i}", block, _BLOCK_SKIP)
                cout = model_channels * mult
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **zero)

    def embed(
        self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None, augment_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(self._class_labels(class_labels))
        return F.silu(emb)

    def output(self, x: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        return self.out_conv(F.silu(self.out_norm(x)))


NETWORKS: dict[str, type[_UNet]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
