"""exporters/triton.py: the repository layout, and config.pbtxt parsed as protobuf text format.

The parser is protobuf's own ``text_format`` on a descriptor built here with the field names, numbers and
types of Triton's ``model_config.proto`` (triton-inference-server/common) for the messages the exporter
writes. An unknown field, a wrong enum value or a wrong type fails the parse, as it would in Triton.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from exporters.__main__ import main
from exporters.tensorrt import SIDECAR_FORMAT, sidecar_path
from exporters.triton import BatchingConfig, InstanceConfig, write_triton_repo

F = descriptor_pb2.FieldDescriptorProto
DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
              "TYPE_BF16"]  # fmt: skip


def _model_config_class():
    """A ``inference.ModelConfig`` message class covering the fields our config.pbtxt uses."""
    fp = descriptor_pb2.FileDescriptorProto(name="onestep_test_model_config.proto", package="inference")
    fp.syntax = "proto3"
    dt = fp.enum_type.add(name="DataType")
    for i, n in enumerate(DATA_TYPES):
        dt.value.add(name=n, number=i)

    def msg(name: str, fields: list[tuple], parent=None):
        m = (parent.nested_type if parent is not None else fp.message_type).add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("ModelTensorReshape", [("shape", 1, F.TYPE_INT64, rep, None)])
    msg(
        "ModelInput",
        [
            ("name", 1, F.TYPE_STRING, opt, None),
            ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType"),
            ("dims", 4, F.TYPE_INT64, rep, None),
            ("reshape", 5, F.TYPE_MESSAGE, opt, ".inference.ModelTensorReshape"),
        ],
    )
    msg(
        "ModelOutput",
        [
            ("name", 1, F.TYPE_STRING, opt, None),
            ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType"),
            ("dims", 3, F.TYPE_INT64, rep, None),
            ("reshape", 5, F.TYPE_MESSAGE, opt, ".inference.ModelTensorReshape"),
        ],
    )
    qp = msg(
        "ModelQueuePolicy",
        [
            ("timeout_action", 1, F.TYPE_ENUM, opt, ".inference.ModelQueuePolicy.TimeoutAction"),
            ("default_timeout_microseconds", 2, F.TYPE_UINT64, opt, None),
            ("allow_timeout_override", 3, F.TYPE_BOOL, opt, None),
            ("max_queue_size", 4, F.TYPE_UINT32, opt, None),
        ],
    )
    ta = qp.enum_type.add(name="TimeoutAction")
    ta.value.add(name="REJECT", number=0)
    ta.value.add(name="DELAY", number=1)
    msg(
        "ModelDynamicBatching",
        [
            ("preferred_batch_size", 1, F.TYPE_INT32, rep, None),
            ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, opt, None),
            ("preserve_ordering", 3, F.TYPE_BOOL, opt, None),
            ("default_queue_policy", 6, F.TYPE_MESSAGE, opt, ".inference.ModelQueuePolicy"),
        ],
    )
    ig = msg(
        "ModelInstanceGroup",
        [
            ("name", 1, F.TYPE_STRING, opt, None),
            ("count", 2, F.TYPE_INT32, opt, None),
            ("gpus", 3, F.TYPE_INT32, rep, None),
            ("kind", 4, F.TYPE_ENUM, opt, ".inference.ModelInstanceGroup.Kind"),
        ],
    )
    kind = ig.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    msg("ModelParameter", [("string_value", 1, F.TYPE_STRING, opt, None)])
    mc = msg(
        "ModelConfig",
        [
            ("name", 1, F.TYPE_STRING, opt, None),
            ("platform", 2, F.TYPE_STRING, opt, None),
            ("max_batch_size", 4, F.TYPE_INT32, opt, None),
            ("input", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInput"),
            ("output", 6, F.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
            ("instance_group", 7, F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup"),
            ("default_model_filename", 8, F.TYPE_STRING, opt, None),
            ("dynamic_batching", 11, F.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"),
            ("parameters", 14, F.TYPE_MESSAGE, rep, ".inference.ModelConfig.ParametersEntry"),
            ("backend", 17, F.TYPE_STRING, opt, None),
        ],
    )
    entry = msg(
        "ParametersEntry",
        [
            ("key", 1, F.TYPE_STRING, opt, None),
            ("value", 2, F.TYPE_MESSAGE, opt, ".inference.ModelParameter"),
        ],
        parent=mc,
    )
    entry.options.map_entry = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def parse_config(path: Path):
    return text_format.Parse(path.read_text(), ModelConfig())


def test_parser_rejects_what_triton_rejects():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "m" max_batch: 4', ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { name: "z" data_type: FP32 } ]', ModelConfig())


def test_onnx_repository(tiny_dir: Path, tiny_onnx: Path, tmp_path: Path):
    folder = write_triton_repo(
        tiny_dir,
        tmp_path / "repo",
        batching=BatchingConfig(max_batch_size=64, max_queue_delay_us=2000),
        instances=InstanceConfig(count=2),
        intra_op_threads=1,
    )
    assert folder == tmp_path / "repo" / "tiny-cond"
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg.name == "tiny-cond" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == 2  # KIND_CPU
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"

    # Shapes agree with the graph's, minus the batch dim; [N] labels are fed as dims [1] reshaped to [].
    graph = onnx.load(str(tiny_onnx)).graph
    graph_io = {
        v.name: ([d.dim_value for d in v.type.tensor_type.shape.dim][1:], v.type.tensor_type.elem_type)
        for v in list(graph.input) + list(graph.output)
    }
    onnx_types = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_INT64": onnx.TensorProto.INT64,
                  "TYPE_UINT8": onnx.TensorProto.UINT8}  # fmt: skip
    tensors = list(cfg.input) + list(cfg.output)
    assert sorted(t.name for t in tensors) == sorted(graph_io)
    for t in tensors:
        dims, elem = graph_io[t.name]
        model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        assert model_dims == dims, t.name
        assert onnx_types[DATA_TYPES[t.data_type]] == elem, t.name
    labels = next(t for t in cfg.input if t.name == "class_labels")
    assert list(labels.dims) == [1] and list(labels.reshape.shape) == []
    assert list(next(t for t in cfg.output if t.name == "images_uint8").dims) == [16, 16, 1]


def test_tensorrt_repository_from_sidecar(tiny_dir: Path, tmp_path: Path):
    """The plan path: shapes and the batch limit come from the sidecar that the TensorRT build writes."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    (model_dir / "model.plan").write_bytes(b"not a real engine: Triton would load it, this test only reads shapes")
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": "10.13.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "precision": "fp16",
        "profiles": [{"min": 1, "opt": 8, "max": 32}],
        "io": {
            "z": {"mode": "input", "shape": [-1, 1, 16, 16], "dtype": "FLOAT"},
            "class_labels": {"mode": "input", "shape": [-1], "dtype": "INT64"},
            "images": {"mode": "output", "shape": [-1, 1, 16, 16], "dtype": "FLOAT"},
            "images_uint8": {"mode": "output", "shape": [-1, 16, 16, 1], "dtype": "UINT8"},
        },
        "model": {"name": "tiny-plan"},
    }
    sidecar_path(model_dir / "model.plan").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="exceeds the plan's profiles"):
        write_triton_repo(model_dir, tmp_path / "repo", backend="tensorrt", batching=BatchingConfig(max_batch_size=64))
    rc = main(["triton", "--model", str(model_dir), "--repo", str(tmp_path / "repo"), "--backend", "tensorrt",
               "--max-batch-size", "32", "--preferred", "8,32", "--queue-delay-us", "500"])  # fmt: skip
    assert rc == 0
    folder = tmp_path / "repo" / "tiny-plan"
    assert (folder / "1" / "model.plan").is_file() and (folder / "model.plan.json").is_file()
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert cfg.instance_group[0].kind == 1  # KIND_GPU
    assert {t.name: list(t.dims) for t in cfg.output} == {"images": [1, 16, 16], "images_uint8": [16, 16, 1]}


def test_bad_settings(tiny_dir: Path, tiny_onnx: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="preferred batch sizes"):
        write_triton_repo(tiny_dir, tmp_path, batching=BatchingConfig(max_batch_size=8, preferred_batch_sizes=[4, 16]))
    with pytest.raises(ValueError, match="backend"):
        write_triton_repo(tiny_dir, tmp_path, backend="tflite")
    with pytest.raises(FileNotFoundError, match="build the plan first"):
        write_triton_repo(tiny_dir, tmp_path, backend="tensorrt")
