"""PyTorch backend: the reference on CPU, and the fast path on a CUDA GPU.

On CPU the generator runs in float32, traced with TorchScript and in channels-last layout (``compile_generator``).
On CUDA (``service.backends.cuda_graphs``) it runs in bfloat16 or float16 where the model's parity against float32
holds at load (``choose_dtype``), with one CUDA graph per batch bucket, the uint8 conversion on the GPU, and one
non-blocking device-to-host copy per batch into a pinned buffer.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.backends.base import Backend, BackendError
from service.backends.cuda_graphs import BucketRunner, Capture, CaptureError, bucket_sizes, cuda_graph_capture
from service.config import Settings
from training.checkpoint import ModelConfig, load_model
from training.precond import OneStepGenerator
from training.sampling import seeded_noise

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Parity of a reduced-precision generator against float32 at load, on PARITY_SEEDS (labels seed % classes):
#: the largest |difference| of the [-1, 1] images, and the mean |difference| of the uint8 images in levels.
#: On models/fmnist-d2o (CPU) bfloat16 gives 0.076 and 0.29 on these seeds (0.16 and 0.31 on 64 others); float16
#: 0.011 and 0.035 (docs/benchmarks.md).
PARITY_MAX_ABS = 0.25
PARITY_MEAN_ABS_U8 = 0.5
PARITY_SEEDS = tuple(range(16))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {name!r}: CUDA is not available here")
    return device


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NHWC, rounding as EDM's generate.py does."""
    return (x * 127.5 + 128).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def compile_generator(
    model: OneStepGenerator, device: torch.device, *, jit: bool, channels_last: bool, atol: float = 1e-5
) -> torch.nn.Module:
    """``model`` in channels-last layout and/or traced with TorchScript, checked against the eager model as loaded.

    Eager PyTorch re-takes the GIL between ops; a U-Net forward has hundreds of them, and each can wait for the
    event loop or an encoder thread to let the GIL go. A traced graph runs from start to end in C++. Channels-last
    weights (inputs are converted in :meth:`TorchBackend.run`) let oneDNN and cuDNN pick their NHWC kernels.
    The check runs at batch sizes other than the traced one; on any failure or disagreement the eager model, as
    loaded, is served (with a warning).
    """
    if not (jit or channels_last):
        return model
    conditional = model.label_dim > 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def example(n: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(n, *model.img_shape, generator=torch.Generator().manual_seed(n)).to(device)
        return (z, (torch.arange(n) % model.label_dim).to(device)) if conditional else (z,)

    def in_layout(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0].contiguous(memory_format=memory_format), *args[1:])

    model = model.eval()
    with torch.inference_mode(False), torch.no_grad():
        reference = {n: (args, model(*args)) for n in (1, 3) for args in [example(n)]}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # Tracer and deprecation warnings: shapes and constants are checked below instead.
            warnings.simplefilter("ignore")
            candidate = copy.deepcopy(model).to(memory_format=memory_format)
            if jit:
                candidate = torch.jit.trace(candidate, in_layout(example(2)), check_trace=False)
            for n, (args, expected) in reference.items():
                err = (candidate(*in_layout(args)) - expected).abs().max().item()
                if not err <= atol:
                    raise BackendError(f"it differs from eager by {err:.3g} at batch {n}")
    except Exception as exc:  # noqa: BLE001 - any failure means: serve the eager model
        log.warning("generator with jit=%s channels_last=%s not used (%s); serving eager", jit, channels_last, exc)
        return model
    return candidate


# ---------------------------------------------------------------- reduced precision


class ReducedPrecisionGenerator(torch.nn.Module):
    """A one-step generator whose U-Net runs in ``dtype`` (bfloat16 or float16), its convolutions' weights stored
    in it.

    As in EDM's ``use_fp16`` scheme the preconditioning (c_skip, c_out, c_in, c_noise), the mapping network (noise
    level and label embeddings, the blocks' affine layers), attention scores and the output stay float32; unlike
    it the convolutions' weights (nearly all of them) are cast once here rather than at every forward. Buffers
    outside the convolutions (NCSN++'s random Fourier frequencies) stay float32. Takes and returns what
    ``OneStepGenerator`` does.
    """

    def __init__(self, generator: OneStepGenerator, dtype: torch.dtype):
        super().__init__()
        den = generator.denoiser
        self._coefficients = den.coefficients  # a bound method: the float32 module is not registered here
        self.unet = copy.deepcopy(den.model)
        for module in self.unet.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(dtype)
        self.sigma = generator.sigma
        self.dtype = dtype
        self._label_dim = generator.label_dim
        self._img_shape = generator.img_shape

    @property
    def label_dim(self) -> int:
        return self._label_dim

    @property
    def img_shape(self) -> tuple[int, int, int]:
        return self._img_shape

    def forward(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = z.shape[0]
        x = z.to(torch.float32) * self.sigma
        sigma = torch.full((n, 1, 1, 1), self.sigma, dtype=torch.float32, device=z.device)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        labels = None
        if self._label_dim:
            if class_labels is None:
                raise ValueError(f"class_labels are required (label_dim={self._label_dim})")
            labels = torch.nn.functional.one_hot(class_labels.long().reshape(n), self._label_dim).to(torch.float32)
        f_x = self.unet((c_in * x).to(self.dtype), c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * f_x.to(torch.float32)


class Uint8Head(torch.nn.Module):
    """generator(z, labels) -> uint8 NHWC, on the generator's device (the conversion runs there, not on the host)."""

    def __init__(self, net: torch.nn.Module, memory_format: torch.memory_format, conditional: bool):
        super().__init__()
        self.net = net
        self.memory_format = memory_format
        self.conditional = conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = z.contiguous(memory_format=self.memory_format)
        out = self.net(z, labels) if self.conditional else self.net(z)
        return to_uint8_nhwc(out)


@dataclass(frozen=True)
class Parity:
    """A reduced-precision generator against float32 on PARITY_SEEDS (see PARITY_MAX_ABS, PARITY_MEAN_ABS_U8)."""

    dtype: str
    max_abs: float
    mean_abs_u8: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_abs <= PARITY_MAX_ABS and self.mean_abs_u8 <= PARITY_MEAN_ABS_U8

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.dtype} failed: {self.error}"
        return (
            f"{self.dtype} vs float32 on {len(PARITY_SEEDS)} seeds: max |diff| {self.max_abs:.3g} "
            f"({'<=' if self.max_abs <= PARITY_MAX_ABS else '>'} {PARITY_MAX_ABS}), uint8 mean |diff| "
            f"{self.mean_abs_u8:.3g} ({'<=' if self.mean_abs_u8 <= PARITY_MEAN_ABS_U8 else '>'} {PARITY_MEAN_ABS_U8})"
        )


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """No TF32 inside (cuDNN convolutions use it by default on Ampere and later): the true float32 reference."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def parity_inputs(model: OneStepGenerator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = seeded_noise(PARITY_SEEDS, model.img_shape).to(device)
    labels = None
    if model.label_dim:
        labels = torch.tensor([s % model.label_dim for s in PARITY_SEEDS], dtype=torch.int64, device=device)
    return z, labels


def measure_parity(
    model: OneStepGenerator, candidate: torch.nn.Module, device: torch.device, dtype_name: str
) -> Parity:
    """``candidate`` (a reduced-precision copy) against ``model`` in float32, both on ``device``."""
    z, labels = parity_inputs(model, device)
    try:
        with torch.inference_mode():
            with exact_float32(device):
                ref = model(z, labels).clamp(-1, 1)
            out = candidate(z, labels).float().clamp(-1, 1)
            if not torch.isfinite(out).all():
                return Parity(dtype_name, float("inf"), float("inf"), "non-finite outputs")
            max_abs = (out - ref).abs().max().item()
            u8 = (to_uint8_nhwc(out).int() - to_uint8_nhwc(ref).int()).abs().float().mean().item()
    except Exception as exc:  # noqa: BLE001 - an op without a kernel in that dtype: not usable
        return Parity(dtype_name, float("inf"), float("inf"), f"{type(exc).__name__}: {exc}")
    return Parity(dtype_name, max_abs, u8)


def dtype_candidates(requested: str, device: torch.device) -> list[str]:
    """The reduced precisions to try, best first; float32 when none passes. ``auto``: bfloat16 then float16 on
    CUDA (bfloat16 only where the GPU has it), float32 on CPU."""
    if requested == "auto":
        if device.type != "cuda":
            return []
        return (["bfloat16"] if torch.cuda.is_bf16_supported() else []) + ["float16"]
    if requested not in DTYPES:
        raise BackendError(f"torch_dtype {requested!r}: expected auto, {', '.join(DTYPES)}")
    return [] if requested == "float32" else [requested]


def choose_dtype(
    model: OneStepGenerator, requested: str, device: torch.device, candidates: Sequence[str] | None = None
) -> tuple[str, torch.nn.Module, list[Parity]]:
    """(dtype name, the generator to serve, the parity checks made): the first candidate within tolerance, else
    float32 (logged with the reason)."""
    checks: list[Parity] = []
    for name in dtype_candidates(requested, device) if candidates is None else candidates:
        candidate = ReducedPrecisionGenerator(model, DTYPES[name]).to(device).eval()
        parity = measure_parity(model, candidate, device, name)
        checks.append(parity)
        if parity.ok:
            return name, candidate, checks
    if checks:
        why = "; ".join(p.describe() for p in checks)
        log.warning("torch backend on %s serves float32 (torch_dtype=%s): %s", device, requested, why)
    return "float32", model, checks


# ---------------------------------------------------------------- the backend


class TorchBackend(Backend):
    """On CPU: float32, traced and channels-last. On CUDA: reduced precision where parity holds, CUDA graphs per
    batch bucket (``torch_cuda_graphs``), optionally ``torch.compile`` (``torch_compile``)."""

    name = "torch"

    def __init__(self, model_dir: Path, config: ModelConfig, settings: Settings):
        super().__init__(model_dir, config, settings)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        cuda = self.device.type == "cuda"
        # Read here, on the inference thread that runs every batch: OpenMP keeps the thread count per thread.
        self._cpu_threads = torch.get_num_threads() if not cuda else None
        model = load_model(model_dir, device=self.device)
        if not isinstance(model, OneStepGenerator):
            raise BackendError(f"{model_dir}: not a one-step generator")
        model = model.eval().requires_grad_(False)
        self.memory_format = torch.channels_last if settings.torch_channels_last else torch.contiguous_format
        self.dtype, net, self.parity = choose_dtype(model, settings.torch_dtype, self.device)
        self.runner: BucketRunner | None = None
        self.compiled = False
        if not cuda:
            self.model: torch.nn.Module = compile_generator(
                net, self.device, jit=settings.torch_jit, channels_last=settings.torch_channels_last
            )
            if settings.torch_compile:
                log.info("%s: torch_compile applies on CUDA only; not used on %s", config.name, self.device)
        else:
            self.model = self._cuda_model(net, settings)
        self._log_choice(config, settings)

    # ------------------------------------------------------------ CUDA

    def _cuda_model(self, net: torch.nn.Module, settings: Settings) -> torch.nn.Module:
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: let cuDNN time its algorithms once
        net = net.to(memory_format=self.memory_format)
        if settings.torch_compile:
            net = compile_module(net)
            self.compiled = True
        elif settings.torch_jit and not settings.torch_cuda_graphs:
            # Without graphs a trace still saves the GIL per op; a graph replay is one call already.
            net = compile_generator(net, self.device, jit=True, channels_last=settings.torch_channels_last)
        head = Uint8Head(net, self.memory_format, conditional=self.label_dim > 0)
        graphs = settings.torch_cuda_graphs
        self.use_buckets(
            head,
            bucket_sizes(settings.max_batch_size) if graphs else None,
            cuda_graph_capture() if graphs else None,
        )
        return net

    def use_buckets(
        self, head: torch.nn.Module, buckets: Sequence[int] | None, capture: Capture | None
    ) -> BucketRunner:
        """Serve through a ``BucketRunner``: captured per bucket with ``capture`` (CUDA graphs), else eagerly;
        the eager runner stays as the fallback. The buckets become ``preferred_batch_sizes``."""
        self._eager = BucketRunner(head, img_shape=self.img_shape, label_dim=self.label_dim, device=self.device)
        self.runner = self._eager
        self.preferred_batch_sizes = None
        if capture is not None:
            self.runner = BucketRunner(
                head,
                img_shape=self.img_shape,
                label_dim=self.label_dim,
                device=self.device,
                buckets=buckets,
                capture=capture,
            )
            self.preferred_batch_sizes = self.runner.buckets
        return self.runner

    def _log_choice(self, config: ModelConfig, settings: Settings) -> None:
        parity = f" ({self.parity[-1].describe()})" if self.parity and self.dtype != "float32" else ""
        how = "eager"
        if self.runner is not None and self.runner.graphs:
            how = f"CUDA graphs at batch sizes {', '.join(map(str, self.runner.buckets))}"
        elif self.device.type == "cpu":
            how = "traced" if isinstance(self.model, torch.jit.ScriptModule) else "eager"
        log.info(
            "%s: torch on %s in %s%s, %s%s",
            config.name,
            self.device,
            self.dtype,
            parity,
            how,
            ", torch.compile" if self.compiled else "",
        )

    def _fall_back_to_eager(self, exc: Exception) -> None:
        log.warning("%s: CUDA graphs not used (%s); serving eagerly", self.config.name, exc)
        self.runner = self._eager
        self.preferred_batch_sizes = None

    def warmup_sizes(self, max_batch_size: int) -> list[int]:
        if self.runner is not None and self.runner.graphs:
            return [s for s in self.runner.buckets if s <= max_batch_size] or [self.runner.buckets[0]]
        return super().warmup_sizes(max_batch_size)

    def warmup(self, max_batch_size: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Capture every bucket the batcher may use (largest first), then run each size once."""
        if self.runner is not None and self.runner.graphs:
            try:
                self.runner.prepare(self.warmup_sizes(max_batch_size), should_stop)
            except CaptureError as exc:  # capture or its replay check failed: eager still works
                self._fall_back_to_eager(exc)
        super().warmup(max_batch_size, should_stop)

    # ------------------------------------------------------------ running

    @property
    def cpu_threads(self) -> int | None:
        return self._cpu_threads

    def generate(self, seeds: Sequence[int], labels: Sequence[int] | None) -> np.ndarray:
        """On CUDA the runner pads to its bucket itself: no noise is drawn for the padding rows."""
        if self.runner is None:
            return super().generate(seeds, labels)
        z = seeded_noise(seeds, self.img_shape)
        lab = np.asarray(labels, dtype=np.int64) if self.label_dim and labels is not None else None
        return self.run(z, lab)

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        if self.runner is not None:
            try:
                return self.runner.run(z, labels)
            except CaptureError as exc:  # a bucket captured on first use (no warm-up) failed
                self._fall_back_to_eager(exc)
                return self.runner.run(z, labels)
        with torch.inference_mode():
            zt = torch.as_tensor(z).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            lt = None if labels is None else torch.from_numpy(labels).to(self.device, non_blocking=True)
            out = self.model(zt, lt) if lt is not None else self.model(zt)
            return to_uint8_nhwc(out).cpu().numpy()


def compile_module(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with static shapes (one compile per bucket at warm-up; the graphs then replay it)."""
    import torch._dynamo

    # One compiled graph per bucket: allow more than dynamo's default of 8 before it gives up and runs eagerly.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(net, dynamic=False)
