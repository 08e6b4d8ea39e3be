"""The evaluation classifier: a small residual CNN whose penultimate layer is the feature space of our metrics.

No Inception weights can be downloaded here, so the project trains its own classifier on the real data
(``python -m training.evaluate train-classifier``) and measures Fréchet distance, KID and precision/recall in
its feature space ("FD-FMNIST" on Fashion-MNIST). Saved like a model dir: ``config.json`` +
``classifier.safetensors``; nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from training.checkpoint import CheckpointError, file_sha256, load_state_dict_file, read_json_object

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "classifier.safetensors"
KIND = "classifier"


class LabeledImages(Protocol):
    """What training and evaluation need from a data set (``training.datasets.ImageDataset`` fits)."""

    num_classes: int
    resolution: int
    channels: int

    def __len__(self) -> int: ...

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class ClassifierConfig:
    img_resolution: int = 28
    img_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)  # one stage each; every stage after the first halves the resolution
    blocks: tuple[int, ...] = (1, 1, 1)  # residual blocks per stage
    feature_dim: int = 128
    dropout: float = 0.2

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError("widths and blocks must be non-empty and of equal length")
        if self.img_channels < 1 or self.num_classes < 2 or self.img_resolution < 4:
            raise ValueError(f"bad classifier shape: {self}")


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class Classifier(nn.Module):
    """Images in [-1, 1] [N, C, H, W] -> logits; ``features`` gives the penultimate activations [N, feature_dim]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(config.img_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        cin = w[0]
        for i, (cout, n) in enumerate(zip(w, config.blocks, strict=True)):
            for j in range(n):
                layers.append(ResidualBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(cin, config.feature_dim, bias=False), nn.BatchNorm1d(config.feature_dim))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check channels and resize to the classifier's resolution (generated images may differ in size)."""
        if images.ndim != 4 or images.shape[1] != self.config.img_channels:
            raise ValueError(
                f"classifier expects [N, {self.config.img_channels}, H, W] images, got {tuple(images.shape)}"
            )
        r = self.config.img_resolution
        images = images.to(torch.float32)
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.prepare(images)))
        return F.relu(self.embed(x.mean(dim=(2, 3))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


# ---------------------------------------------------------------- save / load


def save_classifier(model: Classifier, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "architecture": asdict(model.config),
        "weights": WEIGHTS_NAME,
        "weights_sha256": file_sha256(weights),
        **(extra or {}),
    }
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / CONFIG_NAME)
    return out


def read_classifier_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_NAME
    config = read_json_object(path, "train one with `python -m training.evaluate train-classifier`")
    if config.get("kind") != KIND:
        raise CheckpointError(f'{path}: not a classifier config (expected "kind": "{KIND}")')
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')!r} is not supported")
    if not isinstance(config.get("architecture"), dict):
        raise CheckpointError(f"{path}: missing object 'architecture'")
    return config


def classifier_from_architecture(architecture: Any, source: str) -> Classifier:
    """An untrained classifier from a config's ``architecture`` object; ``source`` names the config in errors."""
    try:
        return Classifier(ClassifierConfig(**architecture))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad 'architecture' ({e})") from e


def load_classifier(model_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    model_dir = Path(model_dir)
    config = read_classifier_config(model_dir)
    model = classifier_from_architecture(config["architecture"], str(model_dir / CONFIG_NAME))
    state = load_state_dict_file(model_dir / config.get("weights", WEIGHTS_NAME), config.get("weights_sha256"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{model_dir}: classifier weights do not fit its config ({e})") from e
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- training


@dataclass
class TrainOptions:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    shift: int = 2  # random translation by up to this many pixels
    flip: bool = True  # random horizontal flips (fine for clothing and natural images, not for digits)
    seed: int = 0
    max_steps: int | None = None  # stop early (tests)
    log_every: int = 100  # progress line every this many steps
    arch: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # continue from this classifier dir (its architecture wins over ``arch``)


def augment(images: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random translation (edge-replicated padding) and horizontal flip."""
    n, c, h, w = images.shape
    if shift > 0:
        padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]
        images = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


@torch.no_grad()
def accuracy(model: Classifier, data: LabeledImages, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        images, labels = data.get_batch(list(range(start, min(start + batch_size, len(data)))))
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / max(len(data), 1)


def train_classifier(
    train: LabeledImages,
    test: LabeledImages | None,
    options: TrainOptions,
    log: Callable[[str], None] = print,
) -> tuple[Classifier, dict[str, Any]]:
    """Train with AdamW + one-cycle LR, label smoothing and mild augmentation; returns (model, summary)."""
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    if options.init is not None:
        model = load_classifier(options.init).requires_grad_(True)
        c = model.config
        if (c.img_resolution, c.img_channels, c.num_classes) != (train.resolution, train.channels, train.num_classes):
            raise ValueError(f"--init {options.init}: classifier shape {c} does not fit the data")
    else:
        config = ClassifierConfig(
            img_resolution=train.resolution, img_channels=train.channels, num_classes=train.num_classes, **options.arch
        )
        model = Classifier(config)
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    if options.max_steps is not None:
        total_steps = min(total_steps, options.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr, total_steps=max(total_steps, 1))
    start_time = time.time()
    step = 0
    for epoch in range(options.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        loss_sum, seen = 0.0, 0
        for start in range(0, len(train), options.batch_size):
            if step >= total_steps:
                break
            images, labels = train.get_batch(perm[start : start + options.batch_size].tolist())
            images = augment(images, options.shift, options.flip, gen)
            loss = F.cross_entropy(model(images), labels, label_smoothing=options.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
            if options.log_every and step % options.log_every == 0:
                rate = step * options.batch_size / (time.time() - start_time)
                log(f"  step {step}/{total_steps}: loss {loss_sum / seen:.4f}, {rate:.0f} images/s")
        elapsed = time.time() - start_time
        msg = f"epoch {epoch + 1}/{options.epochs}: loss {loss_sum / max(seen, 1):.4f}, {elapsed:.0f} s"
        if test is not None:
            msg += f", test accuracy {accuracy(model, test):.4f}"
        log(msg)
        if step >= total_steps:
            break
    model.eval().requires_grad_(False)
    train_seconds = time.time() - start_time
    summary: dict[str, Any] = {
        "steps": step,
        "images_seen": min(step * options.batch_size, options.epochs * len(train)),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "options": {
            **{k: v for k, v in asdict(options).items() if k not in ("max_steps", "log_every")},
            # Only the directory's name: a config must not carry the training machine's paths.
            "init": None if options.init is None else Path(options.init).name,
        },
    }
    if test is not None:
        summary["test_accuracy"] = round(accuracy(model, test), 4)
        summary["test_images"] = len(test)
    return model, summary


# ---------------------------------------------------------------- the project's classifier dirs

DEFAULT_CLASSIFIER = "models/fmnist-classifier"
REPO_ROOT = Path(__file__).resolve().parents[2]


def find_classifier(path: str | Path) -> Path:
    """A relative classifier path is tried from the working dir, then from the repository root."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def train_classifier_dir(
    data: str,
    data_path: str | None,
    out: str | Path,
    options: TrainOptions,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Train on the train split of data set ``data``, test on its test split and save the classifier dir ``out``
    with its metric name, data set, class names and training summary; returns what it added to config.json.

    A classifier already in ``out`` is replaced only with ``force``: every score in its feature space depends on it.
    """
    from training.datasets import open_dataset

    if (Path(out) / CONFIG_NAME).exists() and not force:
        raise FileExistsError(
            f"{out}: holds a classifier already (scores in its feature space depend on it); choose another --out, "
            "or pass --force to replace it"
        )

    train = open_dataset(data, split="train", path=data_path)
    test = open_dataset(data, split="test", path=data_path)
    log(f"Training the evaluation classifier on {data}: {len(train)} train, {len(test)} test images")
    model, summary = train_classifier(train, test, options, log=log)
    short = data.split(":", 1)[0]
    extra = {
        "name": Path(out).name,
        "metric_name": f"FD-{short.upper()}",
        "dataset": {"spec": data, "resolution": train.resolution, "channels": train.channels},
        "class_names": list(getattr(train, "class_names", [])),
        "test_accuracy": summary.get("test_accuracy"),
        "training": summary,
    }
    if options.init:
        extra["training"]["init"] = read_classifier_config(options.init).get("training")
    save_classifier(model, out, extra)
    log(f"Saved {out}: test accuracy {summary.get('test_accuracy')}, {summary['train_seconds']:.0f} s")
    return extra
