"""Feature extraction: images to the feature vectors (and class logits) the metrics compare.

A :class:`FeatureExtractor` is one feature space, with a fingerprint (SHA-256 over its weights and the settings
that shape its features) so that statistics computed with one are never compared with another's. Three kinds:

- ``classifier``: the evaluation classifier trained on the real data (``classifier``): features and logits, so
  class accuracy too; its Fréchet distance is named by the classifier ("FD-FMNIST" on Fashion-MNIST). It needs
  a labelled data set to be trained, and suits that data set only.
- ``teacher``: the encoder of a pre-trained EDM teacher (``training.discriminator.TeacherEncoder``, at the
  fine-tune discriminator's noise levels, no noise added, no class given), each level's activations averaged
  over space and concatenated ("FD-teacher"). Needs no labels: for unconditional models and unlabelled data.
- ``inception``: Inception-v3 pool features from a local weights file (``inception``): the usual FID. Needs no
  labels either.

Features come back as float64 on the CPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.checkpoint import file_sha256
from training.discriminator import DEFAULT_SIGMAS, TeacherEncoder
from training.evaluation.classifier import find_classifier, load_classifier, read_classifier_config
from training.evaluation.inception import FEATURE_DIM, load_inception_features
from training.evaluation.spectra import SpectrumAccumulator
from training.teacher import load_teacher

FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
KINDS = ("classifier", "teacher", "inception")
LABEL_FREE = ("teacher", "inception")  # feature spaces that need no labelled data
TEACHER_SIGMAS = DEFAULT_SIGMAS  # the fine-tune discriminator's noise levels


def fingerprint(*parts: Any) -> str:
    """SHA-256 over a JSON rendering of ``parts``: a feature space's identity."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class FeatureExtractor:
    """One feature space: ``extractor(images)`` -> (features [N, D], logits [N, num_classes] or None)."""

    kind: str  # 'classifier' | 'teacher' | 'inception'
    metric_name: str  # what its Fréchet distance is called: 'FD-FMNIST', 'FD-teacher', 'FID'
    description: str  # one line for reports
    fingerprint: str
    feature_dim: int
    fn: FeatureFn
    num_classes: int = 0  # classes of its logits (0: no logits)
    source: str = ""  # the path it was loaded from, as given
    info: dict[str, Any] = field(default_factory=dict)  # anything else a report shows (test accuracy, ...)

    @property
    def needs_labels(self) -> bool:
        """Whether building this feature space took a labelled data set."""
        return self.kind not in LABEL_FREE

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.fn(images)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric_name": self.metric_name,
            "description": self.description,
            "fingerprint": self.fingerprint,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "source": self.source,
            **self.info,
        }


def classifier_features(model_dir: str | Path, device: str = "cpu") -> FeatureExtractor:
    """The evaluation classifier of ``model_dir`` (``python -m training.evaluate train-classifier``)."""
    path = find_classifier(model_dir)
    model = load_classifier(path, device=device)
    config = read_classifier_config(path)
    arch = config["architecture"]

    def fn(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = model.features(images.to(device))
        return f, model.head(f)

    accuracy = config.get("test_accuracy")
    text = f"the evaluation classifier {model_dir}"
    if accuracy is not None:
        text += f" (test accuracy {accuracy:.4f})"
    data = (config.get("dataset") or {}).get("spec")
    weights_sha = config.get("weights_sha256") or file_sha256(path / config.get("weights", "classifier.safetensors"))
    return FeatureExtractor(
        kind="classifier",
        metric_name=config.get("metric_name", "FD"),
        description=text,
        fingerprint=fingerprint("classifier", weights_sha, arch),
        feature_dim=int(arch.get("feature_dim", model.config.feature_dim)),
        fn=fn,
        num_classes=model.config.num_classes,
        source=str(model_dir),
        info={"test_accuracy": accuracy, "dataset": data, "dir": str(path)},
    )


def _fit(images: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """Images in a network's channel count (gray repeated to RGB, RGB averaged to gray) and size."""
    x = images.to(torch.float32)
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.repeat(1, channels, 1, 1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {channels}-channel network")
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x


def teacher_features(
    path: str | Path, device: str = "cpu", sigmas: Sequence[float] = TEACHER_SIGMAS
) -> FeatureExtractor:
    """The encoder of the teacher at ``path`` (a pre-training run dir or a denoiser model dir)."""
    teacher = load_teacher(path, device=device)
    encoder = TeacherEncoder(teacher.net, sigmas).to(device)
    net = teacher.net

    def fn(images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = _fit(images.to(device), net.img_channels, net.img_resolution)
        return torch.cat([f.mean(dim=(2, 3)) for f in encoder(x, None)], dim=1), None

    seen = teacher.info.get("images_seen")
    text = f"the encoder of the teacher {path} at sigma {', '.join(f'{s:g}' for s in sigmas)}"
    if seen:
        text += f" ({seen:,} pre-training images)"
    return FeatureExtractor(
        kind="teacher",
        metric_name="FD-teacher",
        description=text,
        fingerprint=fingerprint("teacher-encoder", teacher.info["fingerprint"], [float(s) for s in sigmas]),
        feature_dim=sum(encoder.channels),
        fn=fn,
        source=str(path),
        info={"sigmas": [float(s) for s in sigmas], "teacher_fingerprint": teacher.info["fingerprint"]},
    )


def inception_features(path: str | Path, device: str = "cpu") -> FeatureExtractor:
    """Inception-v3 (FID) pool features from a local weights file; nothing is downloaded."""
    fn = load_inception_features(path, device=device)
    return FeatureExtractor(
        kind="inception",
        metric_name="FID",
        description=f"Inception-v3 pool features from {path}",
        fingerprint=fingerprint("inception", file_sha256(Path(path))),
        feature_dim=FEATURE_DIM,
        fn=fn,
        source=str(path),
    )


def build_extractor(kind: str, source: str | Path, device: str = "cpu") -> FeatureExtractor:
    """A feature space by kind and the path it loads from."""
    if kind == "classifier":
        return classifier_features(source, device)
    if kind == "teacher":
        return teacher_features(source, device)
    if kind == "inception":
        return inception_features(source, device)
    raise ValueError(f"unknown features {kind!r}; expected one of {KINDS}")


@torch.no_grad()
def collect_features(fn: FeatureFn, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``fn`` (images -> (features, logits or None)) over batches and concatenate."""
    feats, logits = [], []
    for images in batches:
        f, l = fn(images)
        feats.append(f.double().cpu())
        if l is not None:
            logits.append(l.double().cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


@torch.no_grad()
def extract_features(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    inception: FeatureExtractor | None,
    spectrum: SpectrumAccumulator | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Features, logits (None where the extractor has none) and Inception features (None without
    ``inception``) of every batch, in one pass that also adds each batch to ``spectrum``."""
    feats, logits, inc = [], [], []
    for images in batches:
        if spectrum is not None:
            spectrum.update(images)
        f, l = extractor(images)
        feats.append(f.double().cpu())
        if l is not None:
            logits.append(l.double().cpu())
        if inception is not None:
            inc.append(inception(images)[0].double().cpu())
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats), (torch.cat(logits) if logits else None), (torch.cat(inc) if inc else None)


# ---------------------------------------------------------------- which feature space


def _data_name(spec: str | None) -> str | None:
    """A data set's identity for matching a classifier to it: the named set, or the spec as written."""
    if not spec:
        return None
    scheme, sep, _ = spec.partition(":")
    return scheme if scheme in ("fmnist", "fashion-mnist", "cifar10", "synthetic", "idx") else spec


def classifier_fits(classifier_dir: str | Path, data: str | None) -> tuple[bool, str]:
    """Whether the classifier dir exists and was trained on data set ``data`` (unknown data fits); and why not."""
    path = find_classifier(classifier_dir)
    if not (Path(path) / "config.json").is_file():
        return False, f"no evaluation classifier at {classifier_dir}"
    trained_on = ((read_classifier_config(path).get("dataset")) or {}).get("spec")
    if trained_on and data and _data_name(trained_on) != _data_name(data):
        return False, f"the classifier {classifier_dir} was trained on {trained_on}, not {data}"
    return True, ""


@dataclass
class FeatureChoice:
    kind: str
    source: str
    reason: str


def choose_features(
    requested: str,
    *,
    data: str | None,
    labelled: bool,
    conditional: bool,
    classifier: str | Path | None,
    teacher: str | Path | None,
    inception: str | Path | None,
) -> FeatureChoice:
    """The feature space to use. ``requested`` is a kind or ``auto``: the evaluation classifier for a labelled
    data set and class-conditional models, where one trained on that data set exists; otherwise (unconditional
    models, unlabelled data, no fitting classifier) a space that needs no labels: the teacher's encoder where a
    teacher is known, else Inception where its weights file is given."""
    sources = {"classifier": classifier, "teacher": teacher, "inception": inception}
    flags = {"classifier": "--classifier DIR", "teacher": "--teacher RUN_OR_MODEL_DIR", "inception": "--inception FILE"}
    if requested != "auto":
        if requested not in sources:
            raise ValueError(f"unknown features {requested!r}; expected auto or one of {KINDS}")
        if sources[requested] is None:
            raise ValueError(f"--features {requested} needs {flags[requested]}")
        return FeatureChoice(requested, str(sources[requested]), "asked for")
    why_not = "the models are unconditional" if not conditional else "the data set has no labels"
    if labelled and conditional:
        if classifier is not None:
            fits, why_not = classifier_fits(classifier, data)
            if fits:
                return FeatureChoice("classifier", str(classifier), "labelled data, class-conditional models")
        else:
            why_not = "no evaluation classifier given"
    if teacher is not None:
        return FeatureChoice("teacher", str(teacher), f"needs no labels; chosen as {why_not}")
    if inception is not None:
        return FeatureChoice("inception", str(inception), f"needs no labels; chosen as {why_not}")
    hint = ""
    if labelled and conditional:
        hint = f" or train a classifier: python -m training.evaluate train-classifier --data {data or 'SPEC'} --out DIR"
    raise ValueError(
        f"no feature space to evaluate with: {why_not}. Pass {flags['teacher']} (the teacher's encoder) or "
        f"{flags['inception']} (a local Inception-v3 weights file){hint}"
    )
