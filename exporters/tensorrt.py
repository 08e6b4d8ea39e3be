"""TensorRT engines from the exported ONNX graph (TensorRT >= 10 Python API), with a sidecar that guards loading.

Precision: TensorRT 10 takes an fp32 graph and the FP16/BF16 builder flags ("weak" typing). Those flags are
deprecated since 10.12 and gone in 11, where networks are always strongly typed: there the ONNX graph itself
is exported in fp16/bf16 (``export_onnx(..., precision=...)``) and built as it is ("strong" typing).

An engine only runs on the TensorRT version and GPU model it was built for, so ``model.plan`` gets a JSON
sidecar ``model.plan.json`` (TensorRT version, GPU name, compute capability, profiles, precision, ONNX hash),
checked by :func:`check_sidecar` before any deserialization.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.checkpoint import file_sha256

log = logging.getLogger(__name__)

PLAN_NAME = "model.plan"
TIMING_CACHE_NAME = "tensorrt.timing-cache"
SIDECAR_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "bf16")
# Parity against ONNX Runtime fp32 (max abs difference of images in [-1, 1]).
TRT_ATOL = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 8e-2}


class EngineMismatchError(RuntimeError):
    """A plan built for another TensorRT version or GPU, or whose sidecar is missing or malformed."""


@dataclass(frozen=True)
class Profile:
    """Batch sizes of one optimization profile (other dims are fixed by the graph)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def parse(cls, text: str) -> Profile:
        """``"1:8:64"`` (min:opt:max) or ``"64"`` (1:64:64)."""
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            return cls(1, parts[0], parts[0])
        if len(parts) != 3:
            raise ValueError(f"profile {text!r}: expected MIN:OPT:MAX or MAX")
        return cls(*parts)


@dataclass(frozen=True)
class DeviceInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


def sidecar_path(plan: Path | str) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("TensorRT is not installed (pip install 'onestep[tensorrt]' on a CUDA machine)") from e
    return trt


def _require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and a CUDA build of PyTorch; none is available here")
    return torch


def current_device_info(device: int = 0) -> DeviceInfo:
    trt = _import_trt()
    torch = _require_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    return DeviceInfo(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def check_sidecar(
    sidecar: dict[str, Any], current: DeviceInfo, *, plan: Path | str = PLAN_NAME, allow_other_gpu: bool = False
) -> None:
    """Raise :class:`EngineMismatchError` unless the plan was built for this TensorRT version and GPU.

    TensorRT refuses (or crashes on) plans from another version; a plan from another GPU model with the same
    compute capability may run but with tactics tuned for the wrong chip, so that needs ``allow_other_gpu``.
    """
    missing = [k for k in ("format", "tensorrt_version", "gpu_name", "compute_capability") if k not in sidecar]
    if missing:
        raise EngineMismatchError(f"{sidecar_path(plan)}: missing keys {missing}")
    if sidecar["format"] != SIDECAR_FORMAT:
        raise EngineMismatchError(f"{sidecar_path(plan)}: sidecar format {sidecar['format']!r} is not supported")
    rebuild = f"rebuild it here with `python -m exporters tensorrt --model {Path(plan).parent}`"
    if sidecar["tensorrt_version"] != current.tensorrt_version:
        raise EngineMismatchError(
            f"{plan}: built with TensorRT {sidecar['tensorrt_version']}, this is TensorRT "
            f"{current.tensorrt_version}; engines do not carry across TensorRT versions: {rebuild}"
        )
    if sidecar["compute_capability"] != current.compute_capability:
        raise EngineMismatchError(
            f"{plan}: built for {sidecar['gpu_name']} (compute capability {sidecar['compute_capability']}), "
            f"this GPU is {current.gpu_name} (compute capability {current.compute_capability}): {rebuild}"
        )
    if sidecar["gpu_name"] != current.gpu_name and not allow_other_gpu:
        raise EngineMismatchError(
            f"{plan}: built on {sidecar['gpu_name']}, this GPU is {current.gpu_name} (same compute capability "
            f"{current.compute_capability}, but tuned for another chip): {rebuild}, or pass allow_other_gpu"
        )


def read_sidecar(plan: Path | str) -> dict[str, Any]:
    path = sidecar_path(plan)
    if not path.is_file():
        raise EngineMismatchError(
            f"{path}: sidecar not found; a plan is only loaded with the sidecar written beside it"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineMismatchError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise EngineMismatchError(f"{path}: expected a JSON object")
    return data


def choose_typing(precision: str, trt_version: str, has_precision_flags: bool, typing: str = "auto") -> str:
    """'weak' (fp32 graph + builder precision flags) or 'strong' (graph already in ``precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if typing not in ("auto", "weak", "strong"):
        raise ValueError(f"typing must be auto, weak or strong, got {typing!r}")
    if typing == "weak" and (trt_major(trt_version) >= 11 or not has_precision_flags) and precision != "fp32":
        raise ValueError(f"TensorRT {trt_version} has no FP16/BF16 builder flags; build strongly typed")
    if typing != "auto":
        return typing
    if precision == "fp32":
        return "weak"
    return "weak" if has_precision_flags and trt_major(trt_version) < 11 else "strong"


def onnx_precision_for(precision: str, typing: str) -> str:
    """Precision the ONNX graph must have for this build."""
    return precision if typing == "strong" else "fp32"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(
    onnx_path: Path | str,
    out: Path | str | None = None,
    *,
    precision: str = "fp16",
    typing: str = "auto",
    profiles: Sequence[Profile] = (Profile(1, 32, 64),),
    timing_cache: Path | str | None = None,
    workspace_gib: float = 4.0,
    optimization_level: int = 3,
) -> Path:
    """Build ``out`` (default: ``model.plan`` beside the ONNX file) and its sidecar.

    ``timing_cache`` (default ``tensorrt.timing-cache`` beside the plan) is read when present and rewritten
    after the build, so rebuilding on the same GPU skips most tactic timing.
    """
    trt = _import_trt()
    torch = _require_cuda()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: ONNX file not found (export it with `python -m exporters onnx`)")
    out = Path(out) if out is not None else onnx_path.with_name(PLAN_NAME)
    cache_path = Path(timing_cache) if timing_cache is not None else out.with_name(TIMING_CACHE_NAME)
    device = current_device_info()
    has_flags = hasattr(trt.BuilderFlag, "FP16")
    mode = choose_typing(precision, trt.__version__, has_flags, typing)
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        raise RuntimeError(f"{device.gpu_name} (compute capability {device.compute_capability}) has no bf16")
    meta = _onnx_metadata(onnx_path)
    want = onnx_precision_for(precision, mode)
    if meta.get("precision", "fp32") != want:
        raise ValueError(
            f"{onnx_path}: graph precision is {meta.get('precision', 'fp32')}, a {mode}ly typed {precision} build "
            f"needs a {want} graph (export_onnx(..., precision={want!r}))"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed:\n{errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = optimization_level
    if mode == "weak":
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # keep fp32 parity with ONNX Runtime
        elif precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)

    io: dict[str, dict[str, Any]] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io[t.name] = {"mode": "input", "shape": list(t.shape), "dtype": t.dtype.name}
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io[t.name] = {"mode": "output", "shape": list(t.shape), "dtype": t.dtype.name}
    for prof in profiles:
        p = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            rest = tuple(t.shape)[1:]
            if any(d < 0 for d in rest):
                raise RuntimeError(f"{onnx_path}: input {t.name!r} has dynamic non-batch dims {tuple(t.shape)}")
            p.set_shape(t.name, (prof.min, *rest), (prof.opt, *rest), (prof.max, *rest))
        config.add_optimization_profile(p)

    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("building %s (%s, %s typing, profiles %s) on %s", out, precision, mode, profiles, device.gpu_name)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, bytes(plan))
    _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "format": SIDECAR_FORMAT,
        **asdict(device),
        "precision": precision,
        "typing": mode,
        "profiles": [asdict(p) for p in profiles],
        "io": io,
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "plan_sha256": file_sha256(out),
        "model": meta,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _atomic_write(sidecar_path(out), (json.dumps(sidecar, indent=2) + "\n").encode())
    return out


def _onnx_metadata(path: Path) -> dict[str, str]:
    from exporters.onnx import read_metadata

    return read_metadata(path)


# ---------------------------------------------------------------- loading and running

_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT64": "int64",
    "INT32": "int32",
    "UINT8": "uint8",
    "BOOL": "bool",
    "INT8": "int8",
}


def load_engine(plan: Path | str, *, device: int = 0, allow_other_gpu: bool = False):
    """Deserialize ``plan`` after checking its sidecar against this TensorRT and GPU."""
    trt = _import_trt()
    plan = Path(plan)
    if not plan.is_file():
        raise FileNotFoundError(f"{plan}: TensorRT plan not found (build it with `python -m exporters tensorrt`)")
    sidecar = read_sidecar(plan)
    check_sidecar(sidecar, current_device_info(device), plan=plan, allow_other_gpu=allow_other_gpu)
    if sidecar.get("plan_sha256") not in (None, file_sha256(plan)):
        raise EngineMismatchError(f"{plan}: SHA-256 does not match its sidecar (plan replaced or truncated)")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise EngineMismatchError(f"{plan}: TensorRT could not deserialize the plan")
    return engine, sidecar


class TensorRTRunner:
    """Runs a plan on one CUDA stream: ``run(z, labels)`` -> {output name: array}, as :class:`OnnxRunner`.

    Several profiles (batch buckets) are supported: each batch uses the first profile whose range holds it.
    ``run_device`` keeps inputs and outputs on the GPU for callers that post-process there.
    """

    def __init__(self, plan: Path | str, *, device: int = 0, allow_other_gpu: bool = False):
        trt = _import_trt()
        torch = _require_cuda()
        self._trt, self._torch = trt, torch
        self.plan = Path(plan)
        self.device = torch.device("cuda", device)
        self.engine, self.sidecar = load_engine(self.plan, device=device, allow_other_gpu=allow_other_gpu)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: getattr(torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name]) for n in names}
        first = self.input_names[0]
        self.profiles = []
        for p in range(self.engine.num_optimization_profiles):
            lo, _opt, hi = self.engine.get_tensor_profile_shape(first, p)
            self.profiles.append((int(lo[0]), int(hi[0])))
        self._profile = -1

    @property
    def max_batch(self) -> int:
        return max(hi for _, hi in self.profiles)

    def _select_profile(self, n: int) -> None:
        for i, (lo, hi) in enumerate(self.profiles):
            if lo <= n <= hi:
                if i != self._profile:
                    self.context.set_optimization_profile_async(i, self.stream.cuda_stream)
                    self._profile = i
                return
        raise ValueError(f"{self.plan}: batch {n} is outside every optimization profile {self.profiles}")

    def run_device(self, z, labels=None) -> dict[str, Any]:
        torch = self._torch
        n = int(z.shape[0])
        with torch.cuda.stream(self.stream):
            self._select_profile(n)
            feeds = {"z": torch.as_tensor(z).to(self.device, self.dtypes["z"], non_blocking=True).contiguous()}
            if "class_labels" in self.input_names:
                if labels is None:
                    raise ValueError(f"{self.plan}: the model is class-conditional; class labels are required")
                feeds["class_labels"] = torch.as_tensor(labels).to(self.device, self.dtypes["class_labels"]).reshape(n)
            for name, t in feeds.items():
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.plan}: TensorRT execution failed")
            for t in feeds.values():
                t.record_stream(self.stream)
        self.stream.synchronize()
        return outs

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        outs = self.run_device(z, labels)
        return {
            k: v.float().cpu().numpy() if v.dtype in (self._torch.float16, self._torch.bfloat16) else v.cpu().numpy()
            for k, v in outs.items()
        }


# ---------------------------------------------------------------- model dir -> plan


def check_engine_parity(
    plan: Path | str,
    onnx_path: Path | str,
    *,
    batches: Sequence[int] = (1, 7, 64),
    atol: float | None = None,
    seed: int = 0,
):
    """TensorRT against ONNX Runtime (CPU, fp32 graph) on seeded batches inside the plan's profiles."""
    from exporters import parity
    from exporters.onnx import OnnxRunner

    ref = OnnxRunner(onnx_path)
    runner = TensorRTRunner(plan)
    meta = ref.metadata
    shape = (int(meta["img_channels"]), int(meta["img_resolution"]), int(meta["img_resolution"]))
    usable = [b for b in batches if any(lo <= b <= hi for lo, hi in runner.profiles)]
    precision = runner.sidecar.get("precision", "fp16")
    return parity.compare(
        ref.run,
        runner.run,
        img_shape=shape,
        label_dim=int(meta["label_dim"]),
        batches=usable,
        atol=TRT_ATOL[precision] if atol is None else atol,
        seed=seed,
        names=("onnxruntime", f"tensorrt-{precision}"),
    )


def export_tensorrt(
    model_dir: Path | str,
    out: Path | str | None = None,
    *,
    precision: str = "fp16",
    typing: str = "auto",
    profiles: Sequence[Profile] = (Profile(1, 32, 64),),
    timing_cache: Path | str | None = None,
    check_parity: bool = True,
    parity_batches: Sequence[int] = (1, 7, 64),
) -> Path:
    """Model dir -> ONNX (exported if missing, in the precision the build needs) -> plan + sidecar -> parity."""
    from exporters.onnx import default_onnx_name, export_onnx

    trt = _import_trt()
    _require_cuda()
    model_dir = Path(model_dir)
    mode = choose_typing(precision, trt.__version__, hasattr(trt.BuilderFlag, "FP16"), typing)
    fp32_onnx = model_dir / default_onnx_name("fp32")
    if not fp32_onnx.is_file():
        export_onnx(model_dir, fp32_onnx)
    onnx_path = model_dir / default_onnx_name(onnx_precision_for(precision, mode))
    if not onnx_path.is_file():
        export_onnx(model_dir, onnx_path, precision=onnx_precision_for(precision, mode))
    plan = build_engine(
        onnx_path,
        out if out is not None else model_dir / PLAN_NAME,
        precision=precision,
        typing=mode,
        profiles=profiles,
        timing_cache=timing_cache,
    )
    if check_parity:
        report = check_engine_parity(plan, fp32_onnx, batches=parity_batches)
        log.info("%s", report.table())
        if not report.passed:
            plan.unlink(missing_ok=True)
            sidecar_path(plan).unlink(missing_ok=True)
            report.raise_if_failed(plan)
    return plan
