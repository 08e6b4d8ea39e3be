"""Batch buckets for the torch backend on a GPU: static buffers, CUDA graphs, pinned host copies.

A U-Net forward is hundreds of kernel launches; at small batches the GPU finishes each kernel before the CPU has
launched the next, so a batch-1 image costs the launches, not the arithmetic. A CUDA graph records the launches
of one forward once and replays them with one call. A graph is captured for fixed shapes, so the runner keeps
one *bucket* per batch size in ``buckets`` (the backend's ``preferred_batch_sizes``): a batch of n images runs in
the smallest bucket >= n, its rows copied into the bucket's static input and the padding rows left as they are
(never returned); a batch larger than the largest bucket runs in pieces of that size.

Per batch, host memory is touched twice: the noise (and labels) go from a pinned staging buffer to the bucket's
static input with a non-blocking copy, and the uint8 images (converted on the GPU, NHWC) come back in one
non-blocking copy into a pinned host buffer, after which one event is waited for. Staging and host buffers are
allocated once per size class and reused.

The logic (bucket choice, padding, splitting, buffer reuse, the replay-versus-eager check) does not depend on
CUDA: ``capture`` is a function that takes the forward's body and returns its replay. ``cuda_graph_capture``
records a ``torch.cuda.CUDAGraph``; ``eager_capture`` returns the body itself, which runs the same code on CPU
(the tests pass their own fakes).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

#: z [N, C, H, W] float32 and labels int64 [N] (None: unconditional), on the device -> uint8 [N, H, W, C] there.
Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
#: The body of one forward on a bucket's static buffers -> the function that replays it.
Capture = Callable[[Callable[[], None]], Callable[[], None]]

#: Largest per-pixel difference (uint8 levels) between a graph's replay and the eager forward it recorded.
REPLAY_TOLERANCE = 1


class CaptureError(RuntimeError):
    """A bucket could not be captured, or its replay disagrees with the eager forward it recorded."""


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The powers of two below ``max_batch_size``, and ``max_batch_size`` itself: 32 -> (1, 2, 4, 8, 16, 32).

    A batch is padded by less than 2x; the batcher never forms one larger than the largest bucket.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = {max_batch_size}
    p = 1
    while p < max_batch_size:
        sizes.add(p)
        p *= 2
    return tuple(sorted(sizes))


def eager_capture(body: Callable[[], None]) -> Callable[[], None]:
    """No graph: every replay runs the body (the CPU stand-in, and the fallback)."""
    return body


def cuda_graph_capture(warmup_runs: int = 2, pool: object | None = None) -> Capture:
    """A ``Capture`` that records ``torch.cuda.CUDAGraph``s sharing one memory pool.

    The body runs ``warmup_runs`` times on a side stream first (cuDNN picks its algorithms, lazy state is built,
    ``torch.compile`` compiles), then once under capture. Every graph's persistent inputs and outputs live outside
    the pool, and replays never overlap, so the graphs may share their scratch memory.
    """
    shared = pool if pool is not None else torch.cuda.graph_pool_handle()

    def capture(body: Callable[[], None]) -> Callable[[], None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls other threads make meanwhile (another model's load) do not void the capture.
        with torch.cuda.graph(graph, pool=shared, capture_error_mode="thread_local"):
            body()
        return graph.replay  # the bound method keeps the graph alive

    return capture


class HostBuffers:
    """Host tensors reused by name (pinned when ``pin``), grown when a larger one is asked for."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.allocations = 0
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.zeros(numel, dtype=dtype, pin_memory=self.pin)
            self._buffers[name] = buf
            self.allocations += 1
        return buf[:numel].view(*shape)


@dataclass
class Bucket:
    """One batch size's static device buffers and the replay of its forward."""

    size: int
    z: torch.Tensor
    labels: torch.Tensor | None
    out: torch.Tensor
    replay: Callable[[], None]
    runs: int = 0


class BucketRunner:
    """Runs ``forward`` on batches of any size: in captured buckets when ``capture`` is given, else eagerly.

    ``run`` is called from one thread at a time (the service's inference thread).
    """

    def __init__(
        self,
        forward: Forward,
        *,
        img_shape: Sequence[int],
        label_dim: int,
        device: torch.device,
        buckets: Sequence[int] | None = None,
        capture: Capture | None = None,
        pin_memory: bool | None = None,
    ):
        if capture is not None and not buckets:
            raise ValueError("captured runs need bucket sizes")
        self.forward = forward
        self.img_shape = tuple(img_shape)
        self.label_dim = label_dim
        self.device = torch.device(device)
        self.buckets: tuple[int, ...] = tuple(sorted(set(buckets))) if buckets else ()
        self.capture = capture
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.host = HostBuffers(pin)
        self.slots: dict[int, Bucket] = {}
        self._event = torch.cuda.Event() if self.device.type == "cuda" else None

    @property
    def graphs(self) -> bool:
        return self.capture is not None

    # ------------------------------------------------------------ buckets

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds n images (``Backend.padded_size``'s rule); the largest when none does."""
        i = bisect.bisect_left(self.buckets, n)
        return self.buckets[i] if i < len(self.buckets) else self.buckets[-1]

    def prepare(self, sizes: Iterable[int], should_stop: Callable[[], bool] = lambda: False) -> list[int]:
        """Capture the buckets that hold ``sizes``, largest first (the shared pool then only shrinks)."""
        done = []
        if not self.graphs:
            return done
        for size in sorted({self.bucket_for(s) for s in sizes}, reverse=True):
            if should_stop():
                break
            self._slot(size)
            done.append(size)
        return done

    def _slot(self, size: int) -> Bucket:
        slot = self.slots.get(size)
        if slot is None:
            try:
                slot = self._capture(size)
            except CaptureError:
                raise
            except Exception as exc:  # noqa: BLE001 - an op that cannot be captured, out of memory, ...
                raise CaptureError(f"batch {size}: {type(exc).__name__}: {exc}") from exc
            self.slots[size] = slot
        return slot

    def _capture(self, size: int) -> Bucket:
        """Static buffers for ``size`` images, the forward recorded on them and checked against an eager run."""
        c, h, w = self.img_shape
        gen = torch.Generator().manual_seed(size)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.inference_mode():
            z = torch.randn(size, c, h, w, generator=gen).to(self.device)
            labels = None
            if self.label_dim:
                labels = torch.randint(0, self.label_dim, (size,), generator=gen).to(self.device)
            out = torch.zeros(size, h, w, c, dtype=torch.uint8, device=self.device)

            def body() -> None:
                out.copy_(self.forward(z, labels))

            body()
            expected = out.clone()
            replay = self.capture(body)  # type: ignore[misc]
            out.zero_()
            replay()
            err = (out.int() - expected.int()).abs().max().item()
        if err > REPLAY_TOLERANCE:
            raise CaptureError(f"batch {size}: the replay differs from eager by {err} levels")
        log.debug("captured batch %d", size)
        return Bucket(size, z, labels, out, replay)

    # ------------------------------------------------------------ running

    def run(self, z: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None) -> np.ndarray:
        """z [N, C, H, W] float32 (host), labels int64 [N] or None -> uint8 [N, H, W, C] numpy, a fresh array."""
        zt = torch.as_tensor(z)
        lt = None if labels is None or not self.label_dim else torch.as_tensor(labels)
        n = zt.shape[0]
        c, h, w = self.img_shape
        out = np.empty((n, h, w, c), dtype=np.uint8)
        step = self.buckets[-1] if self.graphs else max(n, 1)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.inference_mode():
            for start in range(0, n, step):
                stop = min(n, start + step)
                piece = None if lt is None else lt[start:stop]
                self._run_piece(zt[start:stop], piece, out[start:stop])
        return out

    def _run_piece(self, z: torch.Tensor, labels: torch.Tensor | None, dst: np.ndarray) -> None:
        m = z.shape[0]
        staged_z = self.host.get("z", z.shape, torch.float32)
        staged_z.copy_(z)
        staged_l = None
        if labels is not None:
            staged_l = self.host.get("labels", labels.shape, torch.int64)
            staged_l.copy_(labels)
        if self.graphs:
            slot = self._slot(self.bucket_for(m))
            slot.z[:m].copy_(staged_z, non_blocking=True)
            if staged_l is not None and slot.labels is not None:
                slot.labels[:m].copy_(staged_l, non_blocking=True)
            slot.replay()
            slot.runs += 1
            result = slot.out[:m]  # the padding rows stay on the device
        else:
            zd = staged_z.to(self.device, non_blocking=True)
            ld = None if staged_l is None else staged_l.to(self.device, non_blocking=True)
            result = self.forward(zd, ld)
        host_out = self.host.get("out", dst.shape, torch.uint8)
        host_out.copy_(result, non_blocking=True)  # the batch's one device-to-host copy
        if self._event is not None:
            self._event.record()
            self._event.synchronize()
        dst[...] = host_out.numpy()


__all__ = [
    "Bucket",
    "BucketRunner",
    "CaptureError",
    "HostBuffers",
    "bucket_sizes",
    "cuda_graph_capture",
    "eager_capture",
]
