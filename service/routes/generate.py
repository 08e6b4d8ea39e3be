"""POST /generate: validate, queue for the batcher, wait (watching for disconnects) for encoded images, respond."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from service.batcher import Batcher, EncodeFailed, InferenceFailed, Job, JobCancelled, NotAccepting, QueueFull
from service.errors import ERROR_RESPONSES, ServiceError, error_response, validation_error_response
from service.lifespan import ModelEntry, ServiceState
from service.middleware import MODEL_SCOPE_KEY
from service.schemas import MAX_SEED, MEDIA_TYPES, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"])
log = logging.getLogger("service")

_RAW_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/*": ""}
_JSON_TYPES = {"application/json", "application/*", "*/*"}
_M64 = (1 << 64) - 1


def raw_format(accept: str | None) -> str | None:
    """The image format an Accept header asks for ("" = the body's format), or None for JSON."""
    if not accept:
        return None
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _RAW_TYPES:
            return _RAW_TYPES[media]
        if media in _JSON_TYPES:
            return None
    return None


def class_from_seed(seed: int, label_dim: int) -> int:
    """A class drawn from the seed alone (splitmix64 finaliser), so seed -> image stays reproducible."""
    x = (seed + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) % label_dim


def resolve_labels(entry: ModelEntry, class_labels: int | list[int] | None, seeds: list[int]) -> list[int] | None:
    k, n = entry.label_dim, len(seeds)
    if k == 0:
        if class_labels is not None:
            raise ServiceError(
                422, "validation_error", f"model {entry.name} is unconditional: send class_labels null", "class_labels"
            )
        return None
    if class_labels is None:
        return [class_from_seed(s, k) for s in seeds]
    labels = [class_labels] * n if isinstance(class_labels, int) else class_labels
    if len(labels) != n:
        raise ServiceError(
            422, "validation_error", f"class_labels has {len(labels)} entries for num_images={n}", "class_labels"
        )
    for c in labels:
        if not 0 <= c < k:
            raise ServiceError(
                422, "validation_error", f"class label {c} is outside 0..{k - 1} of model {entry.name}", "class_labels"
            )
    return labels


def _unavailable(state: ServiceState, reason: str, message: str) -> ServiceError:
    state.metrics.reject(reason)
    return ServiceError(503, reason, message, headers={"Retry-After": str(state.settings.retry_after_s)})


def _on_receive(batcher: Batcher, job: Job, task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    if task.result().get("type") == "http.disconnect":
        batcher.cancel(job, "client_disconnected")


async def _wait(state: ServiceState, receive: Any, batcher: Batcher, job: Job) -> None:
    # After the body, the next receive() returns only when the client goes away: no polling needed.
    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(partial(_on_receive, batcher, job))
    try:
        async with asyncio.timeout(job.deadline - time.perf_counter()):
            await job.future
    except TimeoutError:
        batcher.cancel(job, "deadline")
        state.metrics.reject("deadline")
        raise ServiceError(504, "timeout", f"no result within {state.settings.request_timeout_s} s") from None
    except JobCancelled as e:
        if e.reason == "deadline":
            state.metrics.reject("deadline")
            raise ServiceError(504, "timeout", f"no result within {state.settings.request_timeout_s} s") from None
        if e.reason == "client_disconnected":
            state.metrics.reject("client_disconnected")
            raise ServiceError(499, "client_disconnected", "client closed the connection") from None
        raise _unavailable(state, "not_ready", f"model {batcher.model} stopped: {e.reason}") from None
    except (InferenceFailed, EncodeFailed) as e:
        raise ServiceError(500, "inference_error", str(e)) from None
    finally:
        watcher.cancel()


_IMAGE_CONTENT = {mt: {"schema": {"type": "string", "format": "binary"}} for mt in MEDIA_TYPES.values()}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Generate images in one network evaluation",
    description="JSON in, JSON out (base64 images with seeds, classes and timings). With `Accept: image/png` "
    "(or image/jpeg, image/webp) and one image, the response is the raw image bytes, with its seed and class "
    "in the X-Seed and X-Class-Label headers. Every response carries a Server-Timing header.",
    responses={200: {"content": _IMAGE_CONTENT}, **ERROR_RESPONSES},
)
async def generate(body: GenerateRequest, request: Request) -> Any:
    # Served by GenerateFastPath in practice; this route documents the API and runs if the fast path is off.
    return await run_generate(
        request.app.state.service, body, request.headers.get("accept"), request.scope, request.receive
    )


async def run_generate(
    state: ServiceState, body: GenerateRequest, accept: str | None, scope: dict[str, Any], receive: Any
) -> Response:
    """Everything POST /generate does after the body is parsed; errors are raised as ServiceError."""
    t0 = time.perf_counter()
    s = state.settings
    name = body.model or state.default_model
    entry = state.models.get(name) if name is not None else None
    if entry is None:
        raise ServiceError(404, "model_not_found", f"no model {body.model!r}; see GET /v1/models", "model")
    scope[MODEL_SCOPE_KEY] = entry.name
    n = body.num_images
    if n > s.max_images_per_request:
        state.metrics.reject("too_large")
        raise ServiceError(
            413, "too_large", f"num_images {n} is over the limit {s.max_images_per_request}", "num_images"
        )
    raw = raw_format(accept)
    if raw is not None and n != 1:
        raise ServiceError(
            406, "not_acceptable", "a raw image response holds one image: use JSON for more", "num_images"
        )
    batcher = entry.batcher
    if batcher is None or not entry.ready:
        raise _unavailable(
            state, "not_ready", f"model {entry.name} is {entry.status}" + (f": {entry.error}" if entry.error else "")
        )
    base = random.getrandbits(32) if body.seed is None else body.seed
    seeds = [(base + i) & MAX_SEED for i in range(n)]
    labels = resolve_labels(entry, body.class_labels, seeds)
    fmt = raw or body.format
    try:
        job = batcher.submit(seeds, labels, t0 + s.request_timeout_s, fmt, body.quality, raw is None)
    except QueueFull as e:
        raise _unavailable(state, "queue_full", f"model {entry.name}: {e}") from None
    except NotAccepting as e:
        raise _unavailable(state, "not_ready", f"model {entry.name}: {e}") from None
    await _wait(state, receive, batcher, job)

    blobs = job.blobs
    t_end = time.perf_counter()
    queue_ms = ((job.started or t_end) - job.enqueued) * 1000
    infer_ms = job.inference_s * 1000
    enc_ms = job.encode_s * 1000
    total_ms = (t_end - t0) * 1000
    headers = {
        "Server-Timing": f"queue;dur={queue_ms:.3f}, inference;dur={infer_ms:.3f}, encode;dur={enc_ms:.3f}, "
        f"total;dur={total_ms:.3f}",
        "X-Batch-Size": str(job.batch_size),
    }
    media_type = MEDIA_TYPES[fmt]
    if raw is not None:
        headers["X-Seed"] = str(seeds[0])
        if labels is not None:
            headers["X-Class-Label"] = str(labels[0])
        return Response(blobs[0], media_type=media_type, headers=headers)
    names = entry.class_names
    images = [
        {
            "seed": seeds[i],
            "class_label": None if labels is None else labels[i],
            "class_name": None if labels is None or labels[i] >= len(names) else names[labels[i]],
            "media_type": media_type,
            "data": blobs[i].decode("ascii"),
        }
        for i in range(n)
    ]
    payload = {
        "model": entry.name,
        "images": images,
        "timing": {
            "queue_ms": round(queue_ms, 3),
            "inference_ms": round(infer_ms, 3),
            "encode_ms": round(enc_ms, 3),
            "total_ms": round(total_ms, 3),
            "batch_size": job.batch_size,
        },
    }
    return Response(json.dumps(payload, separators=(",", ":")).encode(), media_type="application/json", headers=headers)


class GenerateFastPath:
    """Serves POST /generate straight from ASGI, skipping FastAPI's routing and dependency machinery.

    Same parsing (the same pydantic model), the same ``run_generate`` and the same error bodies as the
    documented route; on this hardware the framework layers cost more CPU per request than a small model's
    forward pass. Every other request passes through to the app.
    """

    def __init__(self, app: Any, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/generate" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        accept = ctype = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"content-type":
                ctype = value.decode("latin-1")
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            response = await run_generate(self.state, _parse(b"".join(chunks), ctype), accept, scope, receive)
        except ServiceError as e:
            response = error_response(e.status_code, e.type, e.message, e.field, e.headers)
        except ValidationError as e:
            response = validation_error_response([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])
        except Exception as e:  # outside FastAPI's handlers here: keep the one error schema for bugs too
            log.exception("unhandled error on POST /generate")
            response = error_response(500, "internal_error", f"internal error ({type(e).__name__})")
        await response(scope, receive, send)


def _parse(body: bytes, content_type: str | None) -> GenerateRequest:
    if not body:
        raise ServiceError(422, "validation_error", "body: Field required", "body")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ServiceError(
            422, "validation_error", "body: expected a JSON object with Content-Type: application/json", "body"
        )
    return GenerateRequest.model_validate_json(body)
