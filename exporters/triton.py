"""A Triton Inference Server model repository for the exported generator.

Layout: ``REPO/NAME/config.pbtxt`` + ``REPO/NAME/1/model.onnx`` (platform ``onnxruntime_onnx``) or
``REPO/NAME/1/model.plan`` (``tensorrt_plan``; its sidecar goes beside config.pbtxt). Shapes in the config
are read from the graph (ONNX) or the plan's sidecar, without the batch dim, so they always agree with the
model. The batching defaults mirror the service's (``service/config.py``): at most 32 images per batch, a
5 ms queue delay, a queue bounded at 256 requests that rejects (HTTP 503) beyond it or after 30 s.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporters.onnx import ONNX_NAME, export_onnx, read_metadata
from exporters.tensorrt import PLAN_NAME, read_sidecar, sidecar_path

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime": ONNX_NAME, "tensorrt": PLAN_NAME}
# ONNX TensorProto element types and TensorRT DataType names -> Triton DataType.
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}
TRT_TO_TRITON = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "INT64": "TYPE_INT64",
    "INT32": "TYPE_INT32",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "BOOL": "TYPE_BOOL",
}


@dataclass
class TensorSpec:
    """One input or output as Triton sees it: dims exclude the batch dim."""

    name: str
    data_type: str
    dims: list[int]
    reshape: list[int] | None = None

    @classmethod
    def from_batched(cls, name: str, data_type: str, shape: Sequence[int]) -> TensorSpec:
        """From the model's full shape [N, ...]. A rank-1 tensor [N] (class labels) becomes dims [1] reshaped
        to [], Triton's way of feeding a model that takes a plain [N] vector."""
        rest = [int(d) for d in shape[1:]]
        if any(d < 1 for d in rest):
            raise ValueError(f"tensor {name!r}: only the batch dim may be dynamic, got shape {list(shape)}")
        if not rest:
            return cls(name, data_type, [1], reshape=[])
        return cls(name, data_type, rest)

    def render(self) -> str:
        parts = [f'name: "{self.name}"', f"data_type: {self.data_type}", f"dims: [ {', '.join(map(str, self.dims))} ]"]
        if self.reshape is not None:
            parts.append(f"reshape: {{ shape: [ {', '.join(map(str, self.reshape))} ] }}")
        return "  {\n" + "".join(f"    {p}\n" for p in parts) + "  }"


@dataclass
class BatchingConfig:
    max_batch_size: int = 32
    preferred_batch_sizes: list[int] | None = None  # None: the powers of two from 8 up to max_batch_size
    max_queue_delay_us: int = 5000
    max_queue_size: int = 256  # requests; 0 = unbounded
    queue_timeout_us: int = 30_000_000  # 0 = none

    def preferred(self) -> list[int]:
        if self.preferred_batch_sizes is not None:
            sizes = sorted(set(self.preferred_batch_sizes))
        else:
            sizes = [s for s in (8, 16, 32, 64, 128, 256) if s < self.max_batch_size] + [self.max_batch_size]
        bad = [s for s in sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size ({self.max_batch_size})")
        return sizes


@dataclass
class InstanceConfig:
    count: int = 1
    kind: str = "KIND_CPU"  # KIND_GPU for TensorRT / ONNX Runtime on CUDA
    gpus: list[int] = field(default_factory=list)


def onnx_io(path: Path | str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{path}: tensor {v.name!r} has ONNX element type {t.elem_type} with no Triton type")
        return TensorSpec.from_batched(v.name, ONNX_TO_TRITON[t.elem_type], shape)

    inits = {i.name for i in graph.initializer}
    return [spec(v) for v in graph.input if v.name not in inits], [spec(v) for v in graph.output]


def plan_io(plan: Path | str) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Specs from the plan's sidecar, and the largest batch its profiles accept."""
    sidecar = read_sidecar(plan)
    ins, outs = [], []
    for name, t in sidecar["io"].items():
        s = TensorSpec.from_batched(name, TRT_TO_TRITON[t["dtype"]], t["shape"])
        (ins if t["mode"] == "input" else outs).append(s)
    return ins, outs, max(p["max"] for p in sidecar["profiles"])


def render_config(
    name: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    batching: BatchingConfig,
    instances: InstanceConfig,
    parameters: dict[str, str] | None = None,
) -> str:
    b = batching
    queue = []
    if b.max_queue_size:
        queue.append(f"max_queue_size: {b.max_queue_size}")
    if b.queue_timeout_us:
        queue += ["timeout_action: REJECT", f"default_timeout_microseconds: {b.queue_timeout_us}"]
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {b.max_batch_size}",
        "input [\n" + ",\n".join(s.render() for s in inputs) + "\n]",
        "output [\n" + ",\n".join(s.render() for s in outputs) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, b.preferred()))} ]\n"
        f"  max_queue_delay_microseconds: {b.max_queue_delay_us}\n"
        + (f"  default_queue_policy {{ {' '.join(queue)} }}\n" if queue else "")
        + "}",
        "instance_group [\n  {\n"
        f"    count: {instances.count}\n    kind: {instances.kind}\n"
        + (f"    gpus: [ {', '.join(map(str, instances.gpus))} ]\n" if instances.gpus else "")
        + "  }\n]",
    ]
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_repo(
    model_dir: Path | str,
    repo: Path | str,
    *,
    name: str | None = None,
    backend: str = "onnxruntime",
    batching: BatchingConfig | None = None,
    instances: InstanceConfig | None = None,
    intra_op_threads: int | None = None,
    version: int = 1,
) -> Path:
    """Write ``repo/name/`` for ``model_dir`` and return that folder.

    ``onnxruntime`` exports ``model.onnx`` into the model dir first when it is missing; ``tensorrt`` needs
    ``model.plan`` built beforehand on a GPU of the kind Triton runs on (``python -m exporters tensorrt``).
    """
    if backend not in PLATFORMS:
        raise ValueError(f"backend must be one of {sorted(PLATFORMS)}, got {backend!r}")
    model_dir = Path(model_dir)
    source = model_dir / MODEL_FILES[backend]
    batching = batching or BatchingConfig()
    parameters: dict[str, str] = {}
    if backend == "onnxruntime":
        if not source.is_file():
            export_onnx(model_dir, source)
        inputs, outputs = onnx_io(source)
        meta = read_metadata(source)
        instances = instances or InstanceConfig()
        if intra_op_threads is not None:
            parameters["intra_op_thread_count"] = str(intra_op_threads)
            parameters["execution_mode"] = "0"  # sequential
    else:
        if not source.is_file():
            raise FileNotFoundError(f"{source}: build the plan first with `python -m exporters tensorrt`")
        inputs, outputs, plan_max = plan_io(source)
        if batching.max_batch_size > plan_max:
            raise ValueError(
                f"{source}: max_batch_size {batching.max_batch_size} exceeds the plan's profiles "
                f"(largest batch {plan_max})"
            )
        meta = read_sidecar(source).get("model", {})
        instances = instances or InstanceConfig(kind="KIND_GPU")
    name = name or meta.get("name") or model_dir.name
    if not name or any(c in name for c in '/\\"'):
        raise ValueError(f"invalid Triton model name {name!r}")
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / str(version) / MODEL_FILES[backend])
    if backend == "tensorrt":
        shutil.copyfile(sidecar_path(source), folder / sidecar_path(source).name)
    config = render_config(
        name, PLATFORMS[backend], inputs, outputs, batching=batching, instances=instances, parameters=parameters
    )
    (folder / "config.pbtxt").write_text(config)
    return folder
