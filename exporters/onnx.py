"""Export a one-step generator model dir to one ONNX graph, and open it with tuned ONNX Runtime sessions.

Graph contract (``onestep_format`` 1):
  inputs  ``z`` float32 [N, C, H, W] (dynamic N); ``class_labels`` int64 [N], only when ``label_dim > 0``
  outputs ``images`` float32 [N, C, H, W] clamped to [-1, 1]; with ``uint8_output`` also ``images_uint8``
          uint8 [N, H, W, C] = :func:`to_uint8_nhwc` (images), ready for PNG/JPEG/WebP encoding
          (the names and the conversion: ``exporters.graph``).
Preconditioning, sigma_max scaling and the one-hot label lookup are inside the graph. The exporter is
torch's dynamo exporter (``torch.export`` + onnxscript): the TorchScript one cannot export EDM's
resampling convolutions, whose FIR kernels are built at run time.

Metadata (``metadata_props``): ``onestep_format`` (the graph contract's version above), the model's name, shape
and classes, ``config_sha256`` and ``weights_sha256`` (the config.json and weights file the graph was exported
from: a cached export is current when both still match, see ``export_is_current``), precision and versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporters.graph import INPUT_LABELS, INPUT_Z, OUTPUT_IMAGES, OUTPUT_UINT8, to_uint8_nhwc
from exporters.parity import DEFAULT_BATCHES, ParityReport, compare, torch_runner
from training.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    ModelConfig,
    file_sha256,
    load_model,
    read_model_config,
)
from training.precond import OneStepGenerator

log = logging.getLogger(__name__)

ONNX_FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Parity tolerance against PyTorch fp32 (max abs difference of images in [-1, 1]).
PARITY_ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 8e-2}


def default_onnx_name(precision: str = "fp32") -> str:
    return ONNX_NAME if precision == "fp32" else f"model.{precision}.onnx"


class ExportWrapper(nn.Module):
    """The exported function: generator -> clamp -> (optionally) uint8 NHWC.

    With ``precision`` fp16/bf16 the U-Net runs in that dtype (EDM's ``use_fp16`` scheme: parameters stay
    float32 and are cast where used, which constant folding turns into low-precision initializers) while the
    preconditioning, embeddings and outputs stay float32. TensorRT 11 builds such graphs strongly typed.
    """

    def __init__(self, generator: OneStepGenerator, *, uint8_output: bool = True, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.generator = generator
        self.uint8_output = uint8_output
        self.dtype = PRECISIONS[precision]

    def generate(self, z: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        g = self.generator
        if self.dtype == torch.float32:
            return g(z, class_labels)
        den = g.denoiser
        x = z.to(torch.float32) * g.sigma
        sigma = torch.full((z.shape[0], 1, 1, 1), g.sigma, dtype=torch.float32, device=z.device)
        c_skip, c_out, c_in, c_noise = den.coefficients(sigma)
        labels = g.one_hot(class_labels, z.shape[0])
        F_x = den.model((c_in * x).to(self.dtype), c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None):
        images = self.generate(z, class_labels).clamp(-1, 1)
        if self.uint8_output:
            return images, to_uint8_nhwc(images)
        return images


def io_names(label_dim: int, uint8_output: bool) -> tuple[list[str], list[str]]:
    inputs = [INPUT_Z] + ([INPUT_LABELS] if label_dim > 0 else [])
    outputs = [OUTPUT_IMAGES] + ([OUTPUT_UINT8] if uint8_output else [])
    return inputs, outputs


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and its warnings about optional torchvision ops."""
    names = ["torch.onnx._internal.exporter._registration", "torch.onnx", "onnxscript", "onnx_ir"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def torch_to_onnx(wrapper: ExportWrapper, *, opset: int = 18) -> Any:
    """Trace ``wrapper`` with a dynamic batch axis and return the optimized ``onnx.ModelProto``."""
    g = wrapper.generator
    c, h, w = g.img_shape
    inputs, outputs = io_names(g.label_dim, wrapper.uint8_output)
    # Batch 2 as the example: torch.export specializes sizes 0 and 1.
    z = torch.zeros(2, c, h, w)
    batch = torch.export.Dim("batch", min=1)
    if g.label_dim > 0:
        args: tuple = (z, torch.zeros(2, dtype=torch.int64))
        dynamic_shapes: dict = {"z": {0: batch}, "class_labels": {0: batch}}
    else:
        args = (z,)
        dynamic_shapes = {"z": {0: batch}}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            args,
            None,
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            optimize=True,  # onnxscript optimizer: constant folding, dead code and redundant-op removal
            verbose=False,
        )
    model = program.model_proto
    strip_node_metadata(model.graph)
    # Name the batch axis the same on every input and output.
    for value in list(model.graph.input) + list(model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_value:
            dim0.dim_param = "batch"
    return model


def strip_node_metadata(graph: Any) -> None:
    """Drop the exporter's per-node debugging records (Python stack traces with the exporting machine's file
    paths, source module names): they are not needed to run the graph and would leak the build environment."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                strip_node_metadata(attr.g)
            for g in attr.graphs:
                strip_node_metadata(g)


def add_metadata(
    model: Any,
    config: ModelConfig,
    config_bytes: bytes,
    *,
    precision: str,
    uint8_output: bool,
    weights_sha256: str = "",
) -> None:
    meta = {
        "name": config.name or "",
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "weights_sha256": weights_sha256,
        "img_resolution": str(config.img_resolution),
        "img_channels": str(config.img_channels),
        "label_dim": str(config.label_dim),
        "class_names": json.dumps(list(config.class_names)),
        "onestep_format": str(ONNX_FORMAT_VERSION),
        "precision": precision,
        "uint8_output": str(int(uint8_output)),
        "sigma": str(config.sigma) if config.sigma is not None else "",
        "torch_version": torch.__version__,
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"onestep one-step generator {meta['name']!r}: z (and class_labels) -> images in [-1, 1]"


def export_is_current(
    metadata: dict[str, str], model_dir: Path | str, *, precision: str = "fp32", uint8_output: bool = True
) -> str | None:
    """Why an exported graph no longer matches ``model_dir`` (None when it does): another graph contract version
    (``onestep_format``), precision or outputs, or a config.json or weights file other than the ones it was exported
    from (by SHA-256; an export without ``weights_sha256`` is from before it was recorded)."""
    model_dir = Path(model_dir)
    if metadata.get("onestep_format") != str(ONNX_FORMAT_VERSION):
        return f"graph format {metadata.get('onestep_format')!r}, not {ONNX_FORMAT_VERSION}"
    if metadata.get("precision", "fp32") != precision or metadata.get("uint8_output") != str(int(uint8_output)):
        return "another precision or output set"
    config_bytes = (model_dir / CONFIG_NAME).read_bytes()
    if metadata.get("config_sha256") != hashlib.sha256(config_bytes).hexdigest():
        return "config.json changed"
    config = read_model_config(model_dir)
    recorded = metadata.get("weights_sha256")
    if not recorded:
        return "no weights hash recorded (an older export)"
    if recorded != file_sha256(model_dir / config.weights):
        return "weights changed"
    return None


def read_metadata(path: Path | str) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (reads the graph but not the weights' meaning)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(
    model_dir: Path | str,
    out: Path | str | None = None,
    *,
    opset: int = 18,
    uint8_output: bool = True,
    check_parity: bool = True,
    precision: str = "fp32",
    parity_batches: Sequence[int] = (1, 7, 64),
    atol: float | None = None,
) -> Path:
    """Export ``model_dir``'s one-step generator to ONNX; default ``model_dir/model.onnx``.

    Runs ``onnx.checker`` (full check) and, with ``check_parity``, ONNX Runtime against PyTorch on seeded
    batches; the parity table is logged at INFO, and a failure raises :class:`exporters.parity.ParityError`
    without leaving a file at ``out``. The file is written atomically.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    if config.kind != "generator":
        raise CheckpointError(
            f"{model_dir / CONFIG_NAME}: kind is {config.kind!r}; only a one-step generator can be exported"
        )
    config_bytes = (model_dir / CONFIG_NAME).read_bytes()
    weights_sha256 = file_sha256(model_dir / config.weights)
    generator = load_model(model_dir)
    assert isinstance(generator, OneStepGenerator)
    out = Path(out) if out is not None else model_dir / default_onnx_name(precision)

    wrapper = ExportWrapper(generator, uint8_output=uint8_output, precision=precision).eval()
    model = torch_to_onnx(wrapper, opset=opset)
    add_metadata(
        model, config, config_bytes, precision=precision, uint8_output=uint8_output, weights_sha256=weights_sha256
    )
    onnx.checker.check_model(model, full_check=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # per process: two server workers may export at once
    onnx.save_model(model, str(tmp))
    try:
        if check_parity:
            report = check_onnx_parity(
                generator,
                tmp,
                batches=parity_batches,
                atol=PARITY_ATOL[precision] if atol is None else atol,
            )
            log.info("%s", report.table())
            report.raise_if_failed(out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 2**20)
    return out


def check_onnx_parity(
    generator: OneStepGenerator,
    onnx_path: Path | str,
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    atol: float = 1e-4,
    seed: int = 0,
) -> ParityReport:
    """ONNX Runtime (CPU) against the PyTorch generator."""
    runner = OnnxRunner(onnx_path)
    return compare(
        torch_runner(generator),
        runner.run,
        img_shape=generator.img_shape,
        label_dim=generator.label_dim,
        batches=batches,
        atol=atol,
        seed=seed,
        names=("pytorch", "onnxruntime"),
    )


# ---------------------------------------------------------------- ONNX Runtime


def onnx_session(
    path: Path | str,
    *,
    intra_op_threads: int | None = None,
    providers: Sequence[Any] | None = None,
    parallel: bool = False,
    allow_spinning: bool = True,
    denormal_as_zero: bool = False,
    spin_duration_us: int | None = None,
):
    """An ``onnxruntime.InferenceSession`` with the settings the benchmark found best on CPU.

    All graph optimizations, sequential execution (``parallel`` switches to the parallel executor, which only
    pays for graphs with independent branches), one inter-op thread and ``intra_op_threads`` (None: ONNX
    Runtime's default, one per physical core). ``denormal_as_zero`` sets flush-to-zero in the *calling* thread
    too, which changes float behaviour of unrelated code there: enable it only on a dedicated inference thread.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found (export it with `python -m exporters onnx`)")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        so.intra_op_num_threads = intra_op_threads
    if denormal_as_zero:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if spin_duration_us is not None:  # how long an idle intra-op thread spins before it sleeps (ONNX Runtime 1.20+)
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(int(spin_duration_us)))
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxRunner:
    """Runs an exported generator: ``run(z, labels)`` -> {output name: array}. Same interface as TensorRT's."""

    def __init__(self, path: Path | str, **session_kwargs: Any):
        self.path = Path(path)
        self.session = onnx_session(self.path, **session_kwargs)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if INPUT_Z not in self.input_names:
            raise ValueError(f"{self.path}: graph has no input {INPUT_Z!r} (inputs: {self.input_names})")

    @property
    def conditional(self) -> bool:
        return INPUT_LABELS in self.input_names

    def feeds(self, z: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds = {INPUT_Z: np.ascontiguousarray(z, dtype=np.float32)}
        if self.conditional:
            if labels is None:
                raise ValueError(f"{self.path}: the model is class-conditional; class labels are required")
            feeds[INPUT_LABELS] = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        return feeds

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, self.feeds(z, labels))
        return dict(zip(self.output_names, outs, strict=True))
