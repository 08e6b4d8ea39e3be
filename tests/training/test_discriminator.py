"""Discriminators: frozen teacher-encoder backbone, scratch trunk, pluggable backbones from files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_classifier_dir, tiny_denoiser
from training.checkpoint import CheckpointError, save_model
from training.discriminator import (
    ClassifierBackbone,
    TeacherEncoder,
    VGGBackbone,
    build_discriminator,
    count_trainable,
    feature_distance,
    load_backbone,
    minibatch_stddev,
)


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.arange(n) % 10


def test_teacher_disc_frozen_backbone_trainable_heads():
    teacher = tiny_denoiser()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = build_discriminator("teacher", teacher=teacher, img_channels=1, img_resolution=16, label_dim=10)
    d.train()
    assert not d.backbone.training and not teacher.training  # frozen backbone stays in eval mode
    assert len(d.backbone.channels) == 2 * len(d.backbone.taps)  # one tap per resolution, per sigma
    x, y = _batch()
    x.requires_grad_(True)
    out = d(x, y)
    assert out.shape == (4, len(d.heads))
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G and R1 gradients pass through the frozen encoder
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert count_trainable(d) == sum(p.numel() for p in d.heads.parameters())
    state = d.trainable_state_dict()
    assert not any(k.startswith("backbone.") for k in state)
    assert any(k.endswith("._u") for k in state)  # spectral-norm power-iteration vectors are part of the state


def test_class_projection_and_state_round_trip():
    d = build_discriminator("scratch", teacher=None, img_channels=1, img_resolution=16, label_dim=10).eval()
    x, y = _batch()
    assert d(x, y).shape == (4, 1)
    assert not torch.allclose(d(x, y), d(x, (y + 1) % 10))  # labels enter by projection
    assert count_trainable(d) == sum(p.numel() for p in d.parameters())
    d2 = build_discriminator("scratch", teacher=None, img_channels=1, img_resolution=16, label_dim=10).eval()
    d2.load_trainable_state_dict(d.trainable_state_dict())
    assert torch.equal(d(x, y), d2(x, y))
    with pytest.raises(ValueError, match="labels are required"):
        d(x, None)


def test_minibatch_stddev_groups_stay_inside_segments():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(8, 3, 2, 2, generator=g)
    out = minibatch_stddev(h, group=2, segments=2)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], h)
    for start in range(0, 8, 2):  # groups of 2 consecutive samples, the spread over them, averaged
        pair = h[start : start + 2]
        expected = (pair.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[start : start + 2, 3], expected.expand(2, 2, 2))
    # Group 4 in two segments of 4: changing the second segment leaves the first one's channel as it was.
    other = h.clone()
    other[4:] = 0
    first, second = minibatch_stddev(h, 4, 2), minibatch_stddev(other, 4, 2)
    assert torch.equal(first[:4], second[:4]) and not torch.equal(first[4:], second[4:])
    # Identical members: (almost) no spread; a part of 3 with group 4 has groups of gcd(3, 4) = 1.
    assert minibatch_stddev(h[:1].expand(4, 3, 2, 2), 4)[:, 3].max() < 1e-3
    assert torch.allclose(minibatch_stddev(h[:6], 4, 2)[:, 3], torch.full((6, 2, 2), 1e-4))
    with pytest.raises(ValueError, match="equal segments"):
        minibatch_stddev(h[:7], 4, 2)


def test_mbstd_disc_judges_each_sample_by_its_group():
    teacher = tiny_denoiser()
    d = build_discriminator(
        "teacher", teacher=teacher, img_channels=1, img_resolution=16, label_dim=10, mbstd_group=2
    ).eval()
    plain = build_discriminator("teacher", teacher=teacher, img_channels=1, img_resolution=16, label_dim=10).eval()
    # conv1 of every head takes one input channel more: 3x3 weights to each of its 64 outputs.
    assert count_trainable(d) - count_trainable(plain) == 9 * 64 * len(d.heads)
    x, y = _batch(4)
    swapped = x.clone()
    swapped[1] = x[3]
    swapped[3] = x[1]
    # Sample 0's logit moves when its group mate changes; without the layer it would not.
    assert not torch.allclose(d(x, y)[0], d(swapped, y)[0])
    assert torch.allclose(plain(x, y)[0], plain(swapped, y)[0])
    # segments=2 keeps reals (first half) and fakes (second half) apart: the reals' logits ignore the fakes.
    both = torch.cat([x, torch.zeros_like(x)])
    labels = torch.cat([y, y])
    assert torch.allclose(d(both, labels, segments=2)[:4], d(x, y), atol=1e-6)
    with pytest.raises(ValueError, match="mbstd_group"):
        build_discriminator("scratch", teacher=None, img_channels=1, img_resolution=16, label_dim=10, mbstd_group=-1)


def test_without_class_projection_the_class_reaches_d_through_the_backbone_only():
    x, y = _batch()
    kw = dict(teacher=tiny_denoiser(), img_channels=1, img_resolution=16, label_dim=10)
    with_projection = build_discriminator("teacher", **kw).eval()
    encoder_only = build_discriminator("teacher", **kw, class_projection=False).eval()
    assert all(h.embed is not None for h in with_projection.heads)
    assert all(h.embed is None for h in encoder_only.heads)
    shared = {k: v for k, v in with_projection.trainable_state_dict().items() if ".embed." not in k}
    encoder_only.load_trainable_state_dict(shared)  # the same heads but for the projection's embeddings
    pooled = []
    for head in with_projection.heads:
        head.out.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
    difference = with_projection(x, y) - encoder_only(x, y)
    projection = torch.stack(
        [(h.embed(y) * p).sum(1) for h, p in zip(with_projection.heads, pooled, strict=True)], dim=1
    )
    assert torch.allclose(difference, projection, atol=1e-5)  # exactly the <embed(y), phi(h)> term is gone
    assert not torch.allclose(encoder_only(x, y), encoder_only(x, (y + 1) % 10))  # the encoder's class embedding
    with pytest.raises(ValueError, match="labels are required"):
        encoder_only(x, None)  # the backbone still needs them
    scratch = build_discriminator("scratch", teacher=None, img_channels=1, img_resolution=16, label_dim=10,
                                  class_projection=False).eval()  # fmt: skip
    assert torch.equal(scratch(x, y), scratch(x, (y + 1) % 10))  # a backbone that ignores the class: unconditional


def test_unconditional_disc():
    teacher = tiny_denoiser(label_dim=0)
    d = build_discriminator("teacher", teacher=teacher, img_channels=1, img_resolution=16, label_dim=0, sigmas=[0.5])
    x, _ = _batch()
    assert d(x, None).shape == (4, len(d.backbone.taps))


def file_backbone_disc(weights: Path, config: Path):
    """A class-conditional D for 16x16 gray images on a backbone loaded from files."""
    return build_discriminator(
        "backbone",
        teacher=None,
        img_channels=1,
        img_resolution=16,
        label_dim=10,
        backbone_weights=weights,
        backbone_config=config,
    )


def test_pluggable_vgg_backbone(tmp_path: Path):
    layers = [8, "M", 16, 16, "M", 32]
    ref = VGGBackbone(layers, batch_norm=True, in_channels=3)
    weights = {k: v for k, v in ref.state_dict().items()}
    weights["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry a classifier: ignored
    save_file(weights, str(tmp_path / "vgg.safetensors"))
    (tmp_path / "vgg.json").write_text(json.dumps({"type": "vgg", "layers": layers, "batch_norm": True}))
    backbone = load_backbone(tmp_path / "vgg.safetensors", tmp_path / "vgg.json")
    x, y = _batch()
    feats = backbone(x, None)  # gray input repeated to RGB
    assert [f.shape[1] for f in feats] == [8, 16, 32] and [f.shape[-1] for f in feats] == [16, 8, 4]
    for a, b in zip(feats, ref.eval()(x, None), strict=True):
        assert torch.equal(a, b)
    d = file_backbone_disc(tmp_path / "vgg.safetensors", tmp_path / "vgg.json")
    assert d(x, y).shape == (4, 3)
    (tmp_path / "bad.json").write_text(json.dumps({"type": "vgg", "layers": [8, "M", 64]}))
    with pytest.raises(CheckpointError, match="vgg.safetensors"):
        load_backbone(tmp_path / "vgg.safetensors", tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"type": "resnet"}))
    with pytest.raises(CheckpointError, match="'type' must be"):
        load_backbone(tmp_path / "vgg.safetensors", tmp_path / "odd.json")


def test_pluggable_classifier_backbone(tmp_path: Path):
    cls_dir, net = make_classifier_dir(tmp_path / "cls")
    weights, config = cls_dir / "classifier.safetensors", cls_dir / "config.json"
    backbone = load_backbone(weights, config)  # the classifier dir's own config.json (kind "classifier")
    assert isinstance(backbone, ClassifierBackbone) and backbone.channels == [8, 16]
    x, y = _batch()
    feats = backbone(x, y)
    first = net.stages[0](net.stem(x))  # a tap at the end of each stage: blocks (1, 2) end at indices 0 and 2
    assert torch.equal(feats[0], first)
    assert torch.equal(feats[1], net.stages[2](net.stages[1](first)))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 16), (16, 8, 8)]

    d = file_backbone_disc(weights, config)
    d.train()
    assert not d.backbone.training and count_trainable(d.backbone) == 0
    x.requires_grad_(True)
    d(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's gradient passes through the frozen classifier
    assert all(p.grad is None for p in d.backbone.parameters())
    assert d(x, y).shape == (4, 2)

    other, _ = make_classifier_dir(tmp_path / "wider", widths=(8, 32))
    with pytest.raises(CheckpointError, match="classifier.safetensors"):  # weights of another architecture
        load_backbone(weights, other / "config.json")
    (tmp_path / "no-arch.json").write_text(json.dumps({"type": "classifier"}))
    with pytest.raises(CheckpointError, match="architecture"):
        load_backbone(weights, tmp_path / "no-arch.json")


def test_pluggable_edm_encoder_from_model_dir(tmp_path: Path):
    net = tiny_denoiser(seed=3)
    model_dir = save_model(net, tmp_path / "m")
    backbone = load_backbone(model_dir / "denoiser.safetensors", model_dir / "config.json")
    direct = TeacherEncoder(net)
    x, y = _batch()
    for a, b in zip(backbone(x, y), direct(x, y), strict=True):
        assert torch.equal(a, b)


def test_feature_distance():
    enc = TeacherEncoder(tiny_denoiser())
    x, y = _batch()
    assert torch.equal(feature_distance(enc, x, x, y), torch.zeros(4))
    assert (feature_distance(enc, x, x.flip(-1), y) > 0).all()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these nets are tiny, and two spinning OpenMP threads on a busy CI box cost far more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
