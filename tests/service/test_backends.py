"""Backends: per-seed noise, padding to preferred sizes, ONNX Runtime parity with torch, TensorRT on a GPU."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.backends import BackendError, create_backend
from service.backends.base import usable_cpus
from service.backends.torch import compile_generator
from service.batcher import resolve_encode_overlap
from service.config import Settings
from tests.service.conftest import CLASS_NAMES, COND, UNCOND, LiveServer, make_generator
from tests.service.helpers import decode_json_images, max_diff
from training.checkpoint import read_model_config
from training.precond import OneStepGenerator


def build(name: str, model_dir: Path, **settings: object):
    return create_backend(name, model_dir, read_model_config(model_dir), Settings(torch_threads=1, **settings))


def test_torch_images_do_not_depend_on_the_batch(models_dir: Path) -> None:
    backend = build("torch", models_dir / COND)
    batch = backend.generate([5, 6, 7, 8], [1, 2, 3, 4])
    assert batch.shape == (4, 16, 16, 1) and batch.dtype == np.uint8
    assert batch.std() > 10  # real images, not flat grey
    alone = backend.generate([7], [3])
    assert max_diff(batch[2], alone[0]) <= 1
    rgb = build("torch", models_dir / UNCOND).generate([1, 2], None)
    assert rgb.shape == (2, 8, 8, 3)


def test_torchscript_trace_equals_eager(models_dir: Path) -> None:
    for name, labels in ((COND, [3, 1, 4, 1, 5]), (UNCOND, None)):
        traced = build("torch", models_dir / name, torch_channels_last=False)
        eager = build("torch", models_dir / name, torch_jit=False, torch_channels_last=False)
        assert isinstance(traced.model, torch.jit.ScriptModule)
        assert not isinstance(eager.model, torch.jit.ScriptModule)
        seeds = [9, 8, 7, 6, 5]
        assert np.array_equal(traced.generate(seeds, labels), eager.generate(seeds, labels))


def test_channels_last_matches_eager_within_a_level(models_dir: Path) -> None:
    served = build("torch", models_dir / COND)  # the defaults: traced and channels-last
    eager = build("torch", models_dir / COND, torch_jit=False, torch_channels_last=False)
    assert isinstance(served.model, torch.jit.ScriptModule)
    weight = next(p for p in served.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    seeds, labels = [9, 8, 7, 6, 5], [3, 1, 4, 1, 5]
    assert max_diff(served.generate(seeds, labels), eager.generate(seeds, labels)) <= 1


class BatchDependentGenerator(OneStepGenerator):
    """A forward whose Python branch on the batch size a trace would freeze: the parity check must catch it."""

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(z, class_labels)
        return out if z.shape[0] == 2 else -out


def test_trace_that_disagrees_with_eager_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    base = make_generator(16, 1, 10)
    model = BatchDependentGenerator(base.denoiser)
    with caplog.at_level(logging.WARNING):
        served = compile_generator(model, torch.device("cpu"), jit=True, channels_last=False)
    assert served is model
    assert "differs from eager" in caplog.text


def test_padding_to_preferred_sizes_keeps_pixels(models_dir: Path) -> None:
    backend = build("torch", models_dir / COND)
    plain = backend.generate([1, 2, 3], [0, 1, 2])
    backend.preferred_batch_sizes = (4, 8)
    assert [backend.padded_size(n) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 9]
    padded = backend.generate([1, 2, 3], [0, 1, 2])
    assert padded.shape == plain.shape and max_diff(padded, plain) <= 1
    assert backend.warmup_sizes(8) == [4, 8]


def test_unknown_backend_and_missing_tensorrt(models_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend"):
        build("tflite", models_dir / COND)
    with pytest.raises(BackendError, match="GPU|not found|tensorrt"):
        build("tensorrt", models_dir / COND)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A models dir whose model gets its model.onnx exported by the backend on first use."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx-models")
    shutil.copytree(models_dir / COND, root / COND)
    return root


def test_onnxruntime_spinning_follows_the_setting(onnx_models: Path) -> None:
    for allow, entry in ((True, "1"), (False, "0")):
        backend = build("onnxruntime", onnx_models / COND, ort_intra_op_threads=1, ort_allow_spinning=allow)
        options = backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
        with pytest.raises(RuntimeError, match="does not have"):  # unset: ONNX Runtime's default
            options.get_session_config_entry("session.intra_op.spin_duration_us")
        backend.close()
    backend = build("onnxruntime", onnx_models / COND, ort_intra_op_threads=1, ort_spin_duration_us=50)
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "50"
    backend.close()


@pytest.mark.slow
def test_onnx_export_is_cached_and_redone_when_the_weights_change(tmp_path: Path, models_dir: Path) -> None:
    """model.onnx is exported once and reused while it records the weights' and config's SHA-256; new weights, or
    an export from before the hash was recorded, make the backend export again (atomically: no .tmp is left)."""
    pytest.importorskip("onnxruntime")
    from exporters.onnx import read_metadata
    from training.checkpoint import file_sha256, save_model

    model_dir = shutil.copytree(models_dir / COND, tmp_path / COND)
    onnx_path = model_dir / "model.onnx"
    first = build("onnxruntime", model_dir, ort_intra_op_threads=1)
    weights = model_dir / "generator.safetensors"
    assert read_metadata(onnx_path)["weights_sha256"] == file_sha256(weights)
    before = first.generate([1, 2], [3, 4])
    stamp = onnx_path.stat().st_mtime_ns
    build("onnxruntime", model_dir, ort_intra_op_threads=1).close()
    assert onnx_path.stat().st_mtime_ns == stamp  # cached: not exported again

    save_model(make_generator(16, 1, 10, seed=7), model_dir, class_names=CLASS_NAMES)  # new weights
    changed = build("onnxruntime", model_dir, ort_intra_op_threads=1)
    assert read_metadata(onnx_path)["weights_sha256"] == file_sha256(weights)
    after = changed.generate([1, 2], [3, 4])
    assert max_diff(after, before) > 1  # the new weights serve, not the stale graph
    assert max_diff(after, build("torch", model_dir).generate([1, 2], [3, 4])) <= 1

    import onnx  # an export from before the weights' hash was recorded

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != "weights_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(onnx_path))
    build("onnxruntime", model_dir, ort_intra_op_threads=1).close()
    assert read_metadata(onnx_path)["weights_sha256"] == file_sha256(weights)
    assert not list(model_dir.glob("*.tmp"))
    for backend in (first, changed):
        backend.close()


def test_torch_cpu_threads_are_those_of_the_thread_that_built_it(models_dir: Path) -> None:
    """OpenMP keeps the thread count per thread: the backend reports what its inference thread runs with."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(1) as infer:
            backend = infer.submit(build, "torch", models_dir / COND).result()  # torch_threads=1 on that thread
        assert torch.get_num_threads() == 2 and backend.cpu_threads == 1
    finally:
        torch.set_num_threads(before)


def test_encode_overlap_auto_follows_the_cpu_threads(models_dir: Path, onnx_models: Path) -> None:
    """auto: encode beside inference unless the runtime's CPU threads fill every core and do not spin."""
    cores = usable_cpus()
    torch_backend = build("torch", models_dir / COND)
    assert torch_backend.cpu_threads == torch.get_num_threads() == 1
    assert resolve_encode_overlap("auto", torch_backend) is (cores > 1)
    # ONNX Runtime's own choice: one thread per core; they spin between runs unless told not to.
    ort_default = build("onnxruntime", onnx_models / COND)
    assert ort_default.cpu_threads == cores and ort_default.spins_between_runs
    assert resolve_encode_overlap("auto", ort_default) is True
    ort_calm = build("onnxruntime", onnx_models / COND, ort_allow_spinning=False)
    assert resolve_encode_overlap("auto", ort_calm) is False
    ort_one = build("onnxruntime", onnx_models / COND, ort_intra_op_threads=1, ort_allow_spinning=False)
    assert resolve_encode_overlap("auto", ort_one) is (cores > 1)
    for backend in (torch_backend, ort_default):
        assert resolve_encode_overlap("on", backend) is True and resolve_encode_overlap("off", backend) is False
    for backend in (ort_default, ort_calm, ort_one):
        backend.close()


@pytest.mark.slow
def test_onnxruntime_matches_torch(onnx_models: Path) -> None:
    model_dir = onnx_models / COND
    seeds, labels = list(range(20, 29)), [i % 10 for i in range(9)]
    # Built and run on a worker thread as the service does: ORT's denormals-as-zero flag is per thread.
    with ThreadPoolExecutor(1) as pool:
        ort_backend = pool.submit(build, "onnxruntime", model_dir, ort_intra_op_threads=1).result()
        assert (model_dir / "model.onnx").is_file()  # exported on first use
        a = pool.submit(ort_backend.generate, seeds, labels).result()
    b = build("torch", model_dir).generate(seeds, labels)
    assert a.shape == b.shape == (9, 16, 16, 1) and a.dtype == np.uint8
    assert max_diff(a, b) <= 1


def test_onnxruntime_backend_serves(onnx_models: Path, serve: Callable[..., LiveServer]) -> None:
    live = serve(models_dir=onnx_models, model_backends={COND: "onnxruntime"}, ort_intra_op_threads=1)
    torch_live = serve(models_dir=onnx_models)
    payload = {"num_images": 3, "seed": 4, "class_labels": [1, 5, 9]}
    with httpx.Client(timeout=30) as c:
        info = c.get(f"{live.url}/v1/models").json()["data"][0]
        assert info["backend"] == "onnxruntime"
        a = c.post(f"{live.url}/generate", json=payload).json()
        b = c.post(f"{torch_live.url}/generate", json=payload).json()
        metrics = c.get(f"{live.url}/metrics").text
    for x, y in zip(decode_json_images(a), decode_json_images(b), strict=True):
        assert max_diff(x, y) <= 1
    assert f'onestep_batch_inference_seconds_count{{backend="onnxruntime",model="{COND}"}}' in metrics


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tensorrt_matches_torch(tmp_path: Path, models_dir: Path) -> None:
    pytest.importorskip("tensorrt")
    from exporters.tensorrt import export_tensorrt

    model_dir = shutil.copytree(models_dir / COND, tmp_path / COND)
    export_tensorrt(model_dir)
    trt_backend = build("tensorrt", model_dir)
    seeds, labels = list(range(5)), [0, 1, 2, 3, 4]
    a = trt_backend.generate(seeds, labels)
    b = build("torch", model_dir, device="cpu").generate(seeds, labels)
    assert max_diff(a, b) <= 2
