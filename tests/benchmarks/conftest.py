"""The benchmarks run against what the packages' tests already build: live servers and exported tiny models."""

from tests.exporters.conftest import tiny_dir, tiny_onnx  # noqa: F401  (fixtures, shared by import)
from tests.service.conftest import models_dir, serve  # noqa: F401
