"""Image data sets and a deterministic, resumable mini-batch stream.

``open_dataset(spec)`` (``spec``) opens a ``--data`` spec with one of the readers: ``idx`` (MNIST-format IDX files,
Fashion-MNIST), ``cifar`` (CIFAR-10 python batches), ``folder`` (image folders and zips), ``synthetic``; each returns
an ``ImageDataset`` (``base``): float32 ``[C, H, W]`` images in ``[-1, 1]`` plus an int label (0 for unconditional
sets). ``BatchStream`` (``stream``) cuts a set into seeded, sharded, resumable mini-batches.
"""

from training.datasets.base import SPLITS, DatasetError, ImageDataset, TensorImageDataset
from training.datasets.cifar import CIFAR10_CLASSES, open_cifar10, safe_unpickle
from training.datasets.convert import image_to_uint8
from training.datasets.folder import IMAGE_EXTENSIONS, FolderDataset
from training.datasets.idx import FMNIST_CLASSES, FMNIST_DIR, open_fmnist, open_idx, read_idx
from training.datasets.spec import open_dataset
from training.datasets.stream import BatchStream
from training.datasets.synthetic import open_synthetic

__all__ = [
    "CIFAR10_CLASSES",
    "FMNIST_CLASSES",
    "FMNIST_DIR",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "BatchStream",
    "DatasetError",
    "FolderDataset",
    "ImageDataset",
    "TensorImageDataset",
    "image_to_uint8",
    "open_cifar10",
    "open_dataset",
    "open_fmnist",
    "open_idx",
    "open_synthetic",
    "read_idx",
    "safe_unpickle",
]
