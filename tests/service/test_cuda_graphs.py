"""The torch backend's GPU path, tested on CPU: bucket choice, padding, buffer reuse and the replay check of the
CUDA-graph runner (with a fake capture), and the reduced-precision parity decision (bfloat16 runs on CPU)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.backends import create_backend
from service.backends import torch as torch_backend
from service.backends.cuda_graphs import BucketRunner, CaptureError, bucket_sizes, eager_capture
from service.backends.torch import (
    PARITY_MAX_ABS,
    PARITY_MEAN_ABS_U8,
    ReducedPrecisionGenerator,
    Uint8Head,
    choose_dtype,
    measure_parity,
    to_uint8_nhwc,
)
from service.config import Settings
from tests.service.conftest import COND, UNCOND, make_generator
from tests.service.helpers import max_diff
from training.checkpoint import read_model_config
from training.sampling import seeded_noise


def build(model_dir: Path, **settings: object):
    values: dict[str, object] = dict(torch_threads=1, torch_jit=False, torch_channels_last=False, max_batch_size=8)
    values.update(settings)
    return create_backend("torch", model_dir, read_model_config(model_dir), Settings(**values))


class Recorder:
    """A forward (uint8 NHWC of the tiny generator) that records the batch sizes it ran at."""

    def __init__(self, label_dim: int = 10):
        self.generator = make_generator(16, 1, label_dim)
        self.head = Uint8Head(self.generator, torch.contiguous_format, conditional=label_dim > 0)
        self.sizes: list[int] = []

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.sizes.append(z.shape[0])
        return self.head(z, labels)


class FakeCapture:
    """Counts captures; the replay runs the recorded body (what a CUDA graph's replay does on the GPU)."""

    def __init__(self, replay: Callable[[Callable[[], None]], Callable[[], None]] = eager_capture):
        self.count = 0
        self.replay = replay

    def __call__(self, body: Callable[[], None]) -> Callable[[], None]:
        self.count += 1
        return self.replay(body)


def inputs(seeds: list[int], label_dim: int = 10) -> tuple[torch.Tensor, np.ndarray | None]:
    z = seeded_noise(seeds, (1, 16, 16))
    labels = np.asarray([s % label_dim for s in seeds], dtype=np.int64) if label_dim else None
    return z, labels


def reference(rec: Recorder, seeds: list[int]) -> np.ndarray:
    """Each image alone, eagerly."""
    out = []
    for s in seeds:
        z, labels = inputs([s])
        with torch.inference_mode():
            out.append(rec.head(z, torch.from_numpy(labels)).numpy())
    return np.concatenate(out)


def runner(rec: Recorder, capture: FakeCapture, buckets=(1, 2, 4, 8)) -> BucketRunner:
    return BucketRunner(
        rec, img_shape=(1, 16, 16), label_dim=10, device=torch.device("cpu"), buckets=buckets, capture=capture
    )


def test_bucket_sizes_are_powers_of_two_up_to_the_max() -> None:
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(24) == (1, 2, 4, 8, 16, 24)
    assert bucket_sizes(1) == (1,)
    with pytest.raises(ValueError):
        bucket_sizes(0)


def test_bucket_choice_is_the_backends_padded_size(models_dir: Path) -> None:
    backend = build(models_dir / COND, max_batch_size=24)
    r = backend.use_buckets(Uint8Head(backend.model, torch.contiguous_format, True), bucket_sizes(24), FakeCapture())
    assert backend.preferred_batch_sizes == (1, 2, 4, 8, 16, 24)
    assert [r.bucket_for(n) for n in range(1, 25)] == [backend.padded_size(n) for n in range(1, 25)]
    assert r.bucket_for(100) == 24  # past the largest bucket: run in pieces of it


def test_padding_runs_at_the_bucket_and_is_never_returned() -> None:
    rec, capture = Recorder(), FakeCapture()
    r = runner(rec, capture)
    seeds = [11, 12, 13]
    out = r.run(*inputs(seeds))
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.uint8
    assert set(rec.sizes) == {4}  # the eager check, the capture and the replay: all at bucket 4
    assert capture.count == 1 and list(r.slots) == [4]
    assert max_diff(out, reference(rec, seeds)) <= 1
    # Another 3 after a full 4: the stale fourth row in the static input changes nothing returned.
    r.run(*inputs([1, 2, 3, 4]))
    again = r.run(*inputs(seeds))
    assert np.array_equal(again, out)


def test_buffers_and_captures_are_reused() -> None:
    rec, capture = Recorder(), FakeCapture()
    r = runner(rec, capture)
    r.run(*inputs([1, 2, 3, 4, 5, 6, 7, 8]))
    slot = r.slots[8]
    pointers = (slot.z.data_ptr(), slot.labels.data_ptr(), slot.out.data_ptr())
    allocations = r.host.allocations
    for n in (8, 5, 7, 8, 6):
        r.run(*inputs(list(range(100, 100 + n))))
    assert capture.count == 1 and list(r.slots) == [8] and slot.runs == 6
    assert (slot.z.data_ptr(), slot.labels.data_ptr(), slot.out.data_ptr()) == pointers
    assert r.host.allocations == allocations  # smaller batches reuse the staging and output buffers
    r.run(*inputs([1]))
    assert capture.count == 2 and sorted(r.slots) == [1, 8]


def test_a_batch_past_the_largest_bucket_runs_in_pieces() -> None:
    rec, capture = Recorder(), FakeCapture()
    r = runner(rec, capture, buckets=(1, 2, 4))
    seeds = list(range(40, 51))  # 11 images: 4 + 4 + 3 (padded to 4)
    out = r.run(*inputs(seeds))
    assert out.shape[0] == 11 and set(rec.sizes) == {4}
    assert max_diff(out, reference(rec, seeds)) <= 1


def test_prepare_captures_the_warmup_buckets_largest_first() -> None:
    rec, capture = Recorder(), FakeCapture()
    r = runner(rec, capture)
    assert r.prepare([1, 2, 3, 8]) == [8, 4, 2, 1]
    assert capture.count == 4
    assert r.prepare([5]) == [8] and capture.count == 4  # already captured
    stop = iter([False, True])
    assert r.prepare([16], should_stop=lambda: next(stop)) == [8]


def test_a_replay_that_differs_from_eager_is_refused() -> None:
    rec = Recorder()
    r = runner(rec, FakeCapture(replay=lambda body: lambda: None))  # a "graph" that recorded nothing
    with pytest.raises(CaptureError, match="differs from eager"):
        r.run(*inputs([1, 2]))

    def broken(body: Callable[[], None]) -> Callable[[], None]:
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(CaptureError, match="not permitted"):
        runner(rec, FakeCapture(replay=broken)).prepare([1])


def test_backend_falls_back_to_eager_when_capture_fails(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = build(models_dir / COND)
    plain = backend.generate([5, 6, 7], [1, 2, 3])
    head = Uint8Head(backend.model, torch.contiguous_format, True)
    backend.use_buckets(head, bucket_sizes(8), FakeCapture(replay=lambda body: lambda: None))
    with caplog.at_level(logging.WARNING):
        backend.warmup(8)
    assert "CUDA graphs not used" in caplog.text
    assert backend.preferred_batch_sizes is None and not backend.runner.graphs
    assert max_diff(backend.generate([5, 6, 7], [1, 2, 3]), plain) <= 1
    # Without warm-up the first batch's capture fails instead: same fallback, the batch still served.
    backend.use_buckets(head, bucket_sizes(8), FakeCapture(replay=lambda body: lambda: None))
    assert max_diff(backend.generate([5, 6, 7], [1, 2, 3]), plain) <= 1 and not backend.runner.graphs


@pytest.mark.parametrize("name", [COND, UNCOND])
def test_backend_through_buckets_equals_the_cpu_path(models_dir: Path, name: str) -> None:
    backend = build(models_dir / name)
    label_dim = backend.label_dim
    labels = [3, 1, 4, 1, 5] if label_dim else None
    seeds = [9, 8, 7, 6, 5]
    plain = backend.generate(seeds, labels)
    capture = FakeCapture()
    backend.use_buckets(Uint8Head(backend.model, torch.contiguous_format, label_dim > 0), bucket_sizes(8), capture)
    backend.warmup(8)
    assert capture.count == 4 and sorted(backend.runner.slots) == [1, 2, 4, 8]
    together = backend.generate(seeds, labels)
    assert together.shape == plain.shape and max_diff(together, plain) <= 1
    for i, s in enumerate(seeds):  # same seed, same pixels, whatever the batch or bucket
        alone = backend.generate([s], None if labels is None else [labels[i]])
        assert max_diff(alone[0], together[i]) <= 1
    assert capture.count == 4


# ---------------------------------------------------------------- reduced precision


def test_reduced_precision_generator_in_float32_is_the_generator() -> None:
    g = make_generator(16, 1, 10)
    z, labels = inputs([1, 2, 3])
    y = torch.from_numpy(labels)
    with torch.inference_mode():
        assert torch.allclose(ReducedPrecisionGenerator(g, torch.float32)(z, y), g(z, y), atol=1e-6, rtol=0)
        low = ReducedPrecisionGenerator(g, torch.bfloat16)
        dtypes = {name: p.dtype for name, p in low.unet.named_parameters()}
        convs = [n for n, m in low.unet.named_modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(dtypes[f"{n}.weight"] == torch.bfloat16 for n in convs)
        assert {dtypes[n] for n in dtypes if n.startswith("map_")} == {torch.float32}  # the mapping network
        assert next(g.parameters()).dtype == torch.float32  # the float32 model is left as it was
        assert low(z, y).dtype == torch.float32


def test_bfloat16_parity_on_cpu_decides_the_dtype(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    g = make_generator(16, 1, 10)
    cpu = torch.device("cpu")
    parity = measure_parity(g, ReducedPrecisionGenerator(g, torch.bfloat16), cpu, "bfloat16")
    assert parity.error is None and 0 < parity.max_abs < 1 and parity.mean_abs_u8 >= 0
    assert parity.ok == (parity.max_abs <= PARITY_MAX_ABS and parity.mean_abs_u8 <= PARITY_MEAN_ABS_U8)
    # auto on a CPU: float32, nothing tried.
    assert choose_dtype(g, "auto", cpu)[0] == "float32" and choose_dtype(g, "auto", cpu)[2] == []
    # Within a tolerance the reduced precision is served ...
    monkeypatch.setattr(torch_backend, "PARITY_MAX_ABS", 1.0)
    monkeypatch.setattr(torch_backend, "PARITY_MEAN_ABS_U8", 64.0)
    name, net, checks = choose_dtype(g, "bfloat16", cpu)
    assert name == "bfloat16" and isinstance(net, ReducedPrecisionGenerator) and checks[0].ok
    # ... past it, float32, with a log line saying why.
    monkeypatch.setattr(torch_backend, "PARITY_MAX_ABS", parity.max_abs / 2)
    with caplog.at_level(logging.WARNING):
        name, net, checks = choose_dtype(g, "bfloat16", cpu)
    assert name == "float32" and net is g and not checks[0].ok
    assert "serves float32" in caplog.text and f"> {parity.max_abs / 2}" in caplog.text


def test_a_dtype_that_cannot_run_falls_back(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    g = make_generator(16, 1, 10)

    def no_kernel(self, z, class_labels=None):
        raise RuntimeError('"slow_conv2d_cpu" not implemented for this dtype')

    monkeypatch.setattr(ReducedPrecisionGenerator, "forward", no_kernel)
    with caplog.at_level(logging.WARNING):
        name, net, checks = choose_dtype(g, "float16", torch.device("cpu"))
    assert name == "float32" and checks[0].error and "not implemented" in caplog.text


def test_backend_serves_bfloat16_on_cpu_when_asked(models_dir: Path, monkeypatch) -> None:
    fp32 = build(models_dir / COND)
    assert fp32.dtype == "float32" and fp32.parity == []
    monkeypatch.setattr(torch_backend, "PARITY_MAX_ABS", 1.0)
    monkeypatch.setattr(torch_backend, "PARITY_MEAN_ABS_U8", 64.0)
    bf16 = build(models_dir / COND, torch_dtype="bfloat16")
    assert bf16.dtype == "bfloat16" and bf16.parity[0].ok
    seeds, labels = [1, 2, 3, 4], [0, 1, 2, 3]
    a, b = bf16.generate(seeds, labels), fp32.generate(seeds, labels)
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() <= bf16.parity[0].mean_abs_u8 + 2


def test_uint8_head_converts_on_the_device_it_runs_on() -> None:
    g = make_generator(8, 3, 0)
    head = Uint8Head(g, torch.channels_last, conditional=False)
    z = seeded_noise([1, 2], (3, 8, 8))
    with torch.inference_mode():
        out = head(z, None)
        assert out.dtype == torch.uint8 and out.shape == (2, 8, 8, 3)
        assert torch.equal(out, to_uint8_nhwc(g(z)))
