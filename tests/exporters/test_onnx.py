"""exporters/onnx.py: graph contract, metadata, checker, uint8 output, CLI, failure modes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.__main__ import main
from exporters.onnx import (
    OnnxRunner,
    check_onnx_parity,
    export_is_current,
    export_onnx,
    onnx_session,
    read_metadata,
    to_uint8_nhwc,
)
from exporters.parity import ParityError, seeded_inputs
from tests.exporters.conftest import make_generator_dir
from training.checkpoint import CheckpointError, load_model, save_model
from training.configs import network_config
from training.precond import D2OPrecond


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_to_uint8_nhwc_rounding_and_layout():
    x = torch.tensor([-2.0, -1.0, -0.996, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 7)
    out = to_uint8_nhwc(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 7, 1)
    # floor(x * 127.5 + 128): -1 -> 0, 0 -> 128, 1 -> 255, clamped outside [-1, 1].
    assert out.flatten().tolist() == [0, 0, 1, 128, 191, 255, 255]
    rgb = torch.zeros(2, 3, 4, 5)
    rgb[:, 1] = 1.0
    nhwc = to_uint8_nhwc(rgb)
    assert nhwc.shape == (2, 4, 5, 3)
    assert (nhwc[..., 1] == 255).all() and (nhwc[..., 0] == 128).all()


def test_graph_io_and_dynamic_batch(tiny_onnx: Path):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    ins = {v.name: v for v in model.graph.input}
    outs = {v.name: v for v in model.graph.output}
    assert list(ins) == ["z", "class_labels"]
    assert list(outs) == ["images", "images_uint8"]
    assert _shape(ins["z"]) == ["batch", 1, 16, 16]
    assert _shape(ins["class_labels"]) == ["batch"]
    assert _shape(outs["images"]) == ["batch", 1, 16, 16]
    assert _shape(outs["images_uint8"]) == ["batch", 16, 16, 1]
    assert ins["z"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert ins["class_labels"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert outs["images_uint8"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.opset_import[0].version == 18
    # Constant folding: no node computes only from initializers and constants (e.g. the FIR resampling
    # kernels EDM builds at run time, or casts of weights).
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    foldable = [n.name for n in model.graph.node if n.op_type != "Constant" and n.input and set(n.input) <= consts]
    assert not foldable
    assert not list(tiny_onnx.parent.glob("*.tmp"))


def test_metadata(tiny_dir: Path, tiny_onnx: Path):
    meta = read_metadata(tiny_onnx)
    assert meta["name"] == "tiny-cond"
    assert meta["config_sha256"] == hashlib.sha256((tiny_dir / "config.json").read_bytes()).hexdigest()
    weights = (tiny_dir / "generator.safetensors").read_bytes()
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert export_is_current(meta, tiny_dir) is None
    assert export_is_current({**meta, "onestep_format": "0"}, tiny_dir) == "graph format '0', not 1"
    assert "older export" in export_is_current({k: v for k, v in meta.items() if k != "weights_sha256"}, tiny_dir)
    assert export_is_current({**meta, "weights_sha256": "0" * 64}, tiny_dir) == "weights changed"
    assert export_is_current({**meta, "config_sha256": "0" * 64}, tiny_dir) == "config.json changed"
    assert (meta["img_resolution"], meta["img_channels"], meta["label_dim"]) == ("16", "1", "10")
    assert json.loads(meta["class_names"]) == [f"class-{i}" for i in range(10)]
    assert meta["onestep_format"] == "1"
    assert OnnxRunner(tiny_onnx).metadata["config_sha256"] == meta["config_sha256"]


def test_parity_report(tiny_dir: Path, tiny_onnx: Path):
    report = check_onnx_parity(load_model(tiny_dir), tiny_onnx)
    assert report.passed, report.table()
    assert [r.batch for r in report.results] == [1, 7, 64]
    assert report.max_abs_diff <= 1e-4
    assert all(r.uint8_max_diff is not None and r.uint8_max_diff <= 1 for r in report.results)
    table = report.table()
    assert "onnxruntime vs pytorch" in table and table.count(" ok") == 3


def test_outputs_consistent_and_batch_independent(tiny_onnx: Path):
    runner = OnnxRunner(tiny_onnx, intra_op_threads=1)
    z, labels = seeded_inputs((1, 16, 16), 10, 7, seed=3)
    out = runner.run(z, labels)
    images, u8 = out["images"], out["images_uint8"]
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
    assert u8.dtype == np.uint8 and u8.shape == (7, 16, 16, 1)
    expected = to_uint8_nhwc(torch.from_numpy(images)).numpy()
    assert np.abs(expected.astype(int) - u8.astype(int)).max() <= 1
    # A row's image does not depend on what else is in the batch (the service's seed contract).
    alone = runner.run(z[3:4], labels[3:4])["images"]
    np.testing.assert_allclose(alone[0], images[3], atol=1e-5)
    # The class label changes the image.
    other = runner.run(z[3:4], (labels[3:4] + 1) % 10)["images"]
    assert np.abs(other - alone).mean() > 1e-3


def test_runner_requires_labels_for_conditional(tiny_onnx: Path):
    runner = OnnxRunner(tiny_onnx)
    with pytest.raises(ValueError, match="class labels are required"):
        runner.run(np.zeros((1, 1, 16, 16), np.float32), None)


def test_session_options(tiny_onnx: Path):
    import onnxruntime as ort

    sess = onnx_session(tiny_onnx, intra_op_threads=1)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert isinstance(sess, ort.InferenceSession)
    with pytest.raises(ValueError, match="intra_op_threads"):
        onnx_session(tiny_onnx, intra_op_threads=0)
    with pytest.raises(FileNotFoundError, match="not found"):
        onnx_session(tiny_onnx.with_name("missing.onnx"))


def test_cli_unconditional_fp16_without_uint8(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Unconditional graph, images only, U-Net in fp16 (the TensorRT 11 path): parity at fp16 tolerance."""
    model_dir = make_generator_dir(tmp_path / "uncond", label_dim=0)
    out = tmp_path / "out" / "g.onnx"
    argv = ["onnx", str(model_dir), "--out", str(out), "--no-uint8", "--precision", "fp16", "--parity-batches", "1,3"]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == str(out)
    assert "parity onnxruntime vs pytorch (atol 0.02" in captured.err and "FAIL" not in captured.err
    model = onnx.load(str(out))
    assert [v.name for v in model.graph.input] == ["z"]
    assert [v.name for v in model.graph.output] == ["images"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    meta = read_metadata(out)
    assert meta["label_dim"] == "0" and meta["precision"] == "fp16" and meta["uint8_output"] == "0"
    images = OnnxRunner(out).run(np.zeros((2, 1, 16, 16), np.float32))["images"]
    assert images.shape == (2, 1, 16, 16)


def test_low_precision_export_fails_loudly_at_fp32_tolerance(tiny_dir: Path, tmp_path: Path):
    """An fp16 graph runs in ONNX Runtime within fp16 tolerance; at a tighter atol the export raises, leaving
    no file behind."""
    out = tmp_path / "model.fp16.onnx"
    with pytest.raises(ParityError) as info:
        export_onnx(tiny_dir, out, precision="fp16", parity_batches=(7,), atol=1e-6)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    report = info.value.report
    assert 1e-6 < report.max_abs_diff < 2e-2, report.table()
    assert "FAIL" in str(info.value)


def test_rejects_denoiser_and_low_opset(tmp_path: Path):
    kw = network_config("tiny")
    model_type = kw.pop("model_type")
    den = D2OPrecond(img_resolution=16, img_channels=1, label_dim=0, model_type=model_type, **kw)
    teacher = save_model(den, tmp_path / "teacher")
    with pytest.raises(CheckpointError, match="only a one-step generator"):
        export_onnx(teacher)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(teacher, opset=13)
    assert main(["onnx", "--model", str(tmp_path / "nowhere")]) == 1


@pytest.mark.slow
def test_fmnist_parity(tmp_path: Path):
    """The default config at its real size: full parity on batches 1, 7 and 64."""
    model_dir = make_generator_dir(tmp_path / "fmnist", "fmnist", resolution=28)
    out = export_onnx(model_dir)
    report = check_onnx_parity(load_model(model_dir), out)
    print(report.table())
    assert report.passed and report.max_abs_diff <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ONESTEP_TEST_BIG_EXPORTS") != "1",
    reason="minutes per config on 2 CPU cores; set ONESTEP_TEST_BIG_EXPORTS=1 to run",
)
@pytest.mark.parametrize("config", ["cifar10-ddpmpp", "cifar10-ncsnpp", "64-ddpmpp", "imagenet64-adm"])
def test_big_configs_export(tmp_path: Path, config: str):
    """Every named architecture exports to a checked graph that matches PyTorch at small batches."""
    from benchmarks.exporters import CONFIG_DATA

    res, channels, label_dim = CONFIG_DATA[config]
    model_dir = make_generator_dir(
        tmp_path / config, config, resolution=res, channels=channels, label_dim=min(label_dim, 10)
    )
    out = export_onnx(model_dir, parity_batches=(1, 2))
    onnx.checker.check_model(str(out), full_check=True)
    report = check_onnx_parity(load_model(model_dir), out, batches=(1, 2))
    print(config, report.table(), sep="\n")
    assert report.passed


def test_graph_carries_no_exporter_debug_records(tiny_onnx):
    """Stack traces with the build machine's paths must not ship inside the model file."""
    import onnx

    model = onnx.load(str(tiny_onnx))
    assert all(len(node.metadata_props) == 0 and not node.doc_string for node in model.graph.node)
    assert b"Traceback" not in tiny_onnx.read_bytes() and b'File "' not in tiny_onnx.read_bytes()
