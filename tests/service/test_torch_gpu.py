"""The torch backend on a CUDA GPU: CUDA graphs per bucket, reduced precision, the same pixels whatever the batch.

Skipped without a GPU (``pytest -m gpu`` selects these; ``scripts/gpu_check.sh`` runs them on the GPU machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.backends import create_backend
from service.backends.torch import PARITY_MEAN_ABS_U8
from service.config import Settings
from tests.service.conftest import COND, UNCOND, LiveServer
from tests.service.helpers import decode_json_images
from training.checkpoint import read_model_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def build(model_dir: Path, **settings: object):
    values: dict[str, object] = dict(device="cuda", max_batch_size=16)
    values.update(settings)
    return create_backend("torch", model_dir, read_model_config(model_dir), Settings(**values))


def same_pixels(a: np.ndarray, b: np.ndarray, dtype: str) -> None:
    """float32: every pixel within one level. bfloat16/float16: cuDNN picks its kernels per batch shape, and a
    different float32 accumulation order can flip the rounding of an activation to the reduced precision, which a
    few pixels carry further: at most 1 in 1000 pixels more than one level off, none more than 8."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if dtype == "float32":
        assert diff.max() <= 1, diff.max()
    else:
        assert (diff > 1).mean() <= 1e-3 and diff.max() <= 8, (float((diff > 1).mean()), int(diff.max()))


@pytest.mark.parametrize("dtype", ["float32", "auto"])
@pytest.mark.parametrize("name", [COND, UNCOND])
def test_same_seed_same_pixels_whatever_the_batch_or_bucket(models_dir: Path, name: str, dtype: str) -> None:
    backend = build(models_dir / name, torch_dtype=dtype)
    backend.warmup(16)
    assert backend.runner is not None and backend.runner.graphs, "CUDA graphs fell back to eager"
    assert sorted(backend.runner.slots) == [1, 2, 4, 8, 16]
    label_dim = backend.label_dim
    seeds = list(range(300, 323))  # 23 images: past the largest bucket, so pieces of 16 and 7 (padded to 8)
    labels = [s % label_dim for s in seeds] if label_dim else None
    together = backend.generate(seeds, labels)
    assert together.shape[0] == 23 and together.std() > 10
    for size in (1, 3, 5, 8, 13):
        part = backend.generate(seeds[:size], None if labels is None else labels[:size])
        same_pixels(part, together[:size], backend.dtype)
    assert np.array_equal(backend.generate(seeds, labels), together)  # a replay repeats itself
    # Graphs against the eager GPU path in the same precision, and against the float32 CPU reference.
    eager = build(models_dir / name, torch_cuda_graphs=False, torch_dtype=backend.dtype)
    same_pixels(eager.generate(seeds, labels), together, backend.dtype)
    cpu = build(models_dir / name, device="cpu", torch_threads=1)
    ref = cpu.generate(seeds, labels)
    assert np.abs(ref.astype(int) - together.astype(int)).mean() <= 2 * PARITY_MEAN_ABS_U8


def test_reduced_precision_where_parity_holds(models_dir: Path) -> None:
    backend = build(models_dir / COND)
    if backend.dtype == "float32":
        assert backend.parity and not any(p.ok for p in backend.parity)  # tried, and each failure logged
    else:
        assert backend.dtype in ("bfloat16", "float16") and backend.parity[-1].ok
    fp32 = build(models_dir / COND, torch_dtype="float32")
    assert fp32.dtype == "float32" and fp32.parity == []


def test_batched_requests_equal_lone_requests_on_the_gpu(serve: Callable[..., LiveServer]) -> None:
    """tests/service/test_batching.py's determinism test, through the server on the GPU backend."""
    from tests.service.test_batching import burst

    live = serve(max_batch_size=16, max_wait_ms=300, device="cuda", warmup=True, torch_dtype="float32")
    payloads = [{"seed": 1000 + 17 * i, "class_labels": i % 10} for i in range(16)]
    together = asyncio.run(burst(live.url, payloads))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    assert max(r.json()["timing"]["batch_size"] for r in together) > 1
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for p, r in zip(payloads, together, strict=True):
            alone = c.post("/generate", json=p).json()
            same_pixels(decode_json_images(alone)[0], decode_json_images(r.json())[0], live.settings.torch_dtype)


def test_compiled_graphs_match_plain_graphs(models_dir: Path) -> None:
    plain = build(models_dir / COND, max_batch_size=2)
    compiled = build(models_dir / COND, max_batch_size=2, torch_compile=True, torch_dtype=plain.dtype)
    compiled.warmup(2)
    seeds, labels = [1, 2, 3], [4, 5, 6]
    assert compiled.compiled and compiled.runner.graphs
    same_pixels(compiled.generate(seeds, labels), plain.generate(seeds, labels), plain.dtype)
