"""Images from a model without a server: seed lists, the generation loop and the files it writes.

``OneStepPipeline`` loads a one-step generator model dir (one forward pass per image), or a teacher (a
pre-training run dir or a denoiser model dir, ours or imported from EDM) sampled with Heun or Euler at a chosen
number of network evaluations, and turns seeds and classes into uint8 images or PIL images::

    from training.generation import OneStepPipeline

    pipe = OneStepPipeline.from_pretrained("models/fmnist-d2o")  # device="auto": CUDA when available
    images = pipe(seeds=[0, 1], class_labels=[3, 7])  # uint8 [2, 28, 28, 1]
    pils = pipe(seeds=range(8), output_type="pil")  # classes drawn from the seeds, as the service does

Image i depends only on its seed and class: noise from its own seeded generator (``training.sampling``), and
where no class is given, a class drawn from the seed by the same function the service uses, so a seed gives the
same pixels here as from ``POST /v1/generate``. ``python -m training.generate`` is the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.checkpoint import CONFIG_NAME, CheckpointError, ModelConfig, load_model, read_model_config
from training.images import to_uint8
from training.precond import EDMPrecond, OneStepGenerator
from training.rundir import export_state_snapshot
from training.sampling import SOLVERS, class_from_seed, sample, seeded_noise, steps_for_nfe
from training.teacher import latest_snapshot, load_teacher

MAX_SEED = (1 << 63) - 1  # seeds are non-negative 63-bit integers, as the service takes them
DEFAULT_TEACHER_NFE = 35  # EDM's Heun setting: 18 steps
OUTPUT_TYPES = ("np", "pil", "pt")


# ---------------------------------------------------------------- seeds and classes


def parse_seeds(text: str) -> list[int]:
    """``"0-63,100-109"`` -> [0, 1, ..., 63, 100, ..., 109]: comma-separated seeds and inclusive ranges.

    Seeds are integers in 0..2^63-1; the order is kept and repeats are allowed.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(f"bad seed {part!r}: expected N or A-B (non-negative integers)") from None
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: the end is below the start")
        if lo < 0 or hi > MAX_SEED:
            raise ValueError(f"bad seed {part!r}: seeds lie in 0..{MAX_SEED}")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def resolve_labels(
    seeds: Sequence[int], label_dim: int, class_labels: int | Sequence[int] | None = None
) -> list[int] | None:
    """The class of each image: ``class_labels`` as one class for all or one per seed; where it is None, a class
    drawn from each seed (``training.sampling.class_from_seed``, as the service does). None for unconditional
    models, which take no class."""
    n = len(seeds)
    if label_dim == 0:
        if class_labels is not None:
            raise ValueError("this model is unconditional: it takes no class labels")
        return None
    if class_labels is None:
        return [class_from_seed(s, label_dim) for s in seeds]
    one_class = isinstance(class_labels, (int, np.integer))
    labels = [int(class_labels)] * n if one_class else [int(c) for c in class_labels]  # type: ignore[union-attr]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} class labels for {n} seeds")
    bad = [c for c in labels if not 0 <= c < label_dim]
    if bad:
        raise ValueError(f"class label {bad[0]} is outside 0..{label_dim - 1}")
    return labels


# ---------------------------------------------------------------- loading


def _model_config(path: Path) -> ModelConfig | None:
    if not (path / CONFIG_NAME).is_file():
        return None
    try:
        return read_model_config(path)
    except CheckpointError:
        return None


def load_for_generation(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[OneStepGenerator | EDMPrecond, ModelConfig, Path]:
    """(model, its config, the model dir it came from) for a model dir or a run dir.

    A model dir is loaded as it is (a generator or a denoiser: ours, or one ``training.import_edm`` wrote). A
    run dir gives its latest ``network-snapshot-*``: for a pre-training run, the teacher's newest EMA weights as
    fine-tuning takes them (``training.teacher.load_teacher``); for a fine-tune run, its latest generator.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model dir or run dir")
    config = _model_config(path)
    if config is None and path.is_dir():
        snapshot = latest_snapshot(path) or export_state_snapshot(path)
        snap_config = _model_config(snapshot) if snapshot is not None else None
        if snap_config is not None and snap_config.kind == "denoiser":
            teacher = load_teacher(path, device=device)
            return teacher.net, teacher.config, teacher.model_dir
        if snap_config is not None:
            return load_model(snapshot, device=device), snap_config, snapshot
    if config is None:
        read_model_config(path)  # raises the reason (missing or bad config.json)
        raise CheckpointError(f"{path}: neither a model dir nor a run dir with network-snapshot-* model dirs")
    return load_model(path, device=device), config, path


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``: CUDA when available, else the CPU; otherwise ``torch.device(name)``, checked to exist."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here")
    return device


# ---------------------------------------------------------------- the pipeline


@dataclass
class GeneratedBatch:
    """One batch of the generation loop: seeds, classes (None: unconditional) and uint8 images [N, H, W, C]."""

    seeds: list[int]
    labels: list[int] | None
    images: np.ndarray


class OneStepPipeline:
    """Seeds (and classes) in, images out, for a one-step generator or, at ``nfe`` evaluations, its teacher.

    Build it with :meth:`from_pretrained`. Calling it returns uint8 ``[N, H, W, C]`` arrays (``output_type="np"``),
    a list of PIL images (``"pil"``) or float tensors in [-1, 1] ``[N, C, H, W]`` (``"pt"``).
    """

    def __init__(
        self,
        model: OneStepGenerator | EDMPrecond,
        config: ModelConfig,
        *,
        model_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        nfe: int | None = None,
        solver: str = "heun",
    ):
        self.config = config
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        if isinstance(model, OneStepGenerator):
            if nfe not in (None, 1):
                raise ValueError(f"a one-step generator makes an image in 1 evaluation; got nfe={nfe}")
            self.nfe = 1
        else:
            self.nfe = DEFAULT_TEACHER_NFE if nfe is None else int(nfe)
            steps_for_nfe(self.nfe, solver)  # an even NFE does not fit Heun: fail now, not mid-run

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "auto", nfe: int | None = None, solver: str = "heun"
    ) -> OneStepPipeline:
        """Load a model dir or run dir (see :func:`load_for_generation`) onto ``device`` (``auto``: CUDA when
        available). ``nfe`` and ``solver`` apply to teachers (default: Heun at 35 evaluations)."""
        dev = resolve_device(device)
        model, config, model_dir = load_for_generation(path, device=dev)
        return cls(model, config, model_dir=model_dir, device=dev, nfe=nfe, solver=solver)

    @property
    def one_step(self) -> bool:
        return isinstance(self.model, OneStepGenerator)

    @property
    def label_dim(self) -> int:
        return self.config.label_dim

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def img_shape(self) -> tuple[int, int, int]:
        return self.config.img_shape

    def describe(self) -> str:
        """One line: what generates and how."""
        where = self.model_dir if self.model_dir is not None else self.config.name
        if self.one_step:
            how = "one-step generator, 1 network evaluation per image"
        else:
            how = f"denoiser, {self.solver.capitalize()} sampler at {self.nfe} network evaluations per image"
        c, h, w = self.img_shape
        classes = f"{self.label_dim} classes" if self.label_dim else "unconditional"
        return f"{where}: {how}; {w}x{h}x{c}, {classes}; device {self.device}"

    @torch.no_grad()
    def generate(self, seeds: Sequence[int], labels: Sequence[int] | None) -> torch.Tensor:
        """One batch: float32 images in [-1, 1] ``[N, C, H, W]`` on the pipeline's device."""
        z = seeded_noise(list(seeds), self.img_shape).to(self.device)  # drawn on the CPU: the same on every device
        y = torch.as_tensor(list(labels), dtype=torch.int64, device=self.device) if labels is not None else None
        if self.one_step:
            return self.model(z, y) if y is not None else self.model(z)
        return sample(self.model, z, y, nfe=self.nfe, solver=self.solver)

    def batches(
        self, seeds: Sequence[int], class_labels: int | Sequence[int] | None = None, batch_size: int = 64
    ) -> Iterator[GeneratedBatch]:
        """The generation loop: uint8 images batch by batch, each image from its own seed and class."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        seeds = [int(s) for s in seeds]
        labels = resolve_labels(seeds, self.label_dim, class_labels)
        for start in range(0, len(seeds), batch_size):
            part = seeds[start : start + batch_size]
            lab = labels[start : start + batch_size] if labels is not None else None
            yield GeneratedBatch(part, lab, to_uint8(self.generate(part, lab)))

    def __call__(
        self,
        seeds: Iterable[int],
        class_labels: int | Sequence[int] | None = None,
        *,
        batch_size: int = 64,
        output_type: str = "np",
    ) -> np.ndarray | list[Image.Image] | torch.Tensor:
        """Images for ``seeds``; ``class_labels``: one class for all, one per seed, or None (drawn from each seed
        for conditional models; unconditional models take none)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        seeds = [int(s) for s in seeds]
        if output_type == "pt":
            labels = resolve_labels(seeds, self.label_dim, class_labels)
            parts = [
                self.generate(seeds[i : i + batch_size], labels[i : i + batch_size] if labels else None).cpu()
                for i in range(0, len(seeds), batch_size)
            ]
            return torch.cat(parts) if parts else torch.empty(0, *self.img_shape)
        c, h, w = self.img_shape
        arrays = [b.images for b in self.batches(seeds, class_labels, batch_size)]
        images = np.concatenate(arrays) if arrays else np.empty((0, h, w, c), dtype=np.uint8)
        return [to_pil(a) for a in images] if output_type == "pil" else images


# ---------------------------------------------------------------- files


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 [H, W, C] -> a PIL image (mode L for one channel, RGB for three)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def image_path(outdir: str | Path, seed: int, subdirs: bool = False) -> Path:
    """``outdir/SSSSSS.png``, or with ``subdirs`` ``outdir/TTTTTT/SSSSSS.png`` (one folder per thousand seeds,
    as EDM's generate.py writes them)."""
    outdir = Path(outdir)
    name = f"{seed:06d}.png"
    return outdir / f"{seed - seed % 1000:06d}" / name if subdirs else outdir / name


def save_images(batch: GeneratedBatch, outdir: str | Path, subdirs: bool = False) -> list[Path]:
    """One PNG per image of ``batch``, named by its seed."""
    paths = []
    for seed, image in zip(batch.seeds, batch.images, strict=True):
        path = image_path(outdir, seed, subdirs)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(image).save(path)
        paths.append(path)
    return paths


def save_npz(
    path: str | Path,
    images: np.ndarray,
    seeds: Sequence[int],
    labels: Sequence[int] | None,
    class_names: Sequence[str] = (),
) -> Path:
    """``images`` uint8 [N, H, W, C], ``seeds`` int64 [N], ``labels`` int64 [N] (-1 throughout for an
    unconditional model) and ``class_names``; read back with ``np.load(path)`` (no pickles)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    label_array = np.asarray(labels if labels is not None else [-1] * n, dtype=np.int64)
    np.savez(
        path,
        images=np.asarray(images, dtype=np.uint8),
        seeds=np.asarray(seeds, dtype=np.int64),
        labels=label_array,
        class_names=np.asarray(list(class_names), dtype=str),
    )
    return path


def image_grid(images: np.ndarray, cols: int | None = None) -> Image.Image:
    """Tile uint8 images [N, H, W, C] row-major into one PIL image."""
    n, h, w, c = images.shape
    cols = cols or max(int(math.ceil(math.sqrt(n))), 1)
    rows = max(int(math.ceil(n / cols)), 1)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return to_pil(grid)


@dataclass
class GenerationSummary:
    """What :func:`generate_to_files` wrote."""

    count: int
    seconds: float
    outdir: Path | None
    npz: Path | None
    grid: Path | None

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.count,
            "seconds": round(self.seconds, 3),
            "outdir": str(self.outdir) if self.outdir else None,
            "npz": str(self.npz) if self.npz else None,
            "grid": str(self.grid) if self.grid else None,
        }


def generate_to_files(
    pipe: OneStepPipeline,
    seeds: Sequence[int],
    class_label: int | None = None,
    *,
    batch_size: int = 64,
    outdir: str | Path | None = None,
    subdirs: bool = False,
    npz: str | Path | None = None,
    grid: str | Path | None = None,
    grid_max: int = 256,
    progress: Any = None,
) -> GenerationSummary:
    """Generate ``seeds`` in batches and write PNGs into ``outdir``, one ``npz`` and/or a ``grid`` PNG (of the
    first ``grid_max`` images). ``progress`` is called with the number of images of each finished batch."""
    if outdir is None and npz is None and grid is None:
        raise ValueError("nothing to write: give an output folder, an .npz file or a grid file")
    t0 = time.perf_counter()
    keep_all = npz is not None
    kept_images: list[np.ndarray] = []
    kept_labels: list[int] = []
    grid_images: list[np.ndarray] = []
    count = 0
    for batch in pipe.batches(seeds, class_label, batch_size):
        if outdir is not None:
            save_images(batch, outdir, subdirs)
        if keep_all:
            kept_images.append(batch.images)
            kept_labels.extend(batch.labels or [])
        if grid is not None and count < grid_max:
            grid_images.append(batch.images[: grid_max - count])
        count += len(batch.seeds)
        if progress is not None:
            progress(len(batch.seeds))
    if npz is not None:
        c, h, w = pipe.img_shape
        images = np.concatenate(kept_images) if kept_images else np.empty((0, h, w, c), np.uint8)
        save_npz(npz, images, seeds, kept_labels if pipe.label_dim else None, pipe.class_names)
    if grid is not None and grid_images:
        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        image_grid(np.concatenate(grid_images)).save(grid)
    return GenerationSummary(
        count,
        time.perf_counter() - t0,
        Path(outdir) if outdir is not None else None,
        Path(npz) if npz is not None else None,
        Path(grid) if grid is not None else None,
    )
