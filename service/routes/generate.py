"""POST /v1/generate and its alias POST /generate: validate, queue for the batcher, wait (watching for
disconnects) for encoded images, respond.

Served by ``GenerateEndpoint``, a plain ASGI app rather than a FastAPI route: on this hardware FastAPI's
routing, dependency and response-model layers cost more CPU per request than a small model's forward pass.
The app routes both paths to it (so other methods get 405 and a trailing slash its redirect, as for any route)
and ``GenerateFastPath`` hands POSTs to it ahead of FastAPI's own middleware. ``openapi_paths`` documents it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from functools import lru_cache
from typing import Any

from pydantic import ValidationError
from pydantic.json_schema import models_json_schema

from service.batcher import Batcher, EncodeFailed, InferenceFailed, Job, JobCancelled, NotAccepting, QueueFull
from service.errors import ERROR_RESPONSES, ErrorResponse, ServiceError, error_response, validation_error_response
from service.lifespan import ModelEntry, ServiceState
from service.middleware import GENERATE_PATHS, MODEL_SCOPE_KEY, charge_images
from service.schemas import MAX_SEED, MEDIA_TYPES, RAW_DTYPE, GenerateRequest, GenerateResponse
from training.sampling import class_from_seed

log = logging.getLogger("service")

_RAW_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/webp": "webp",
    "image/*": "",
    "application/octet-stream": "raw",
}
_JSON_TYPES = {"application/json", "application/*", "*/*"}


_ACCEPT_CACHE: dict[str, str | None] = {}


def raw_format(accept: str | None) -> str | None:
    """The format an Accept header asks for as the whole body ("" = the image format the body names, "raw" =
    application/octet-stream: the pixels), or None for JSON. Clients send the same few headers: answers are cached."""
    if not accept:
        return None
    try:
        return _ACCEPT_CACHE[accept]
    except KeyError:
        pass
    fmt = _parse_accept(accept)
    if len(_ACCEPT_CACHE) < 256:
        _ACCEPT_CACHE[accept] = fmt
    return fmt


def _parse_accept(accept: str) -> str | None:
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _RAW_TYPES:
            return _RAW_TYPES[media]
        if media in _JSON_TYPES:
            return None
    return None


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


#: A request still waiting after this long starts watching for its client's disconnect (so that a client gone while
#: its request queues frees the queue slots at once); one answered sooner never pays for the watch (a task per
#: request). A client that left before the watch starts is seen when it does: receive() returns at once then.
WATCH_AFTER_S = 0.05


class _Watch:
    """The timers of one waiting request, as loop callbacks rather than tasks: after ``WATCH_AFTER_S`` it starts the
    disconnect watch (a task awaiting ``receive()``, which returns only when the client goes away), and at the
    deadline it cancels the job (the endpoint answers 504)."""

    __slots__ = ("loop", "receive", "batcher", "job", "timer", "watcher")

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Any, batcher: Batcher, job: Job):
        self.loop = loop
        self.receive = receive
        self.batcher = batcher
        self.job = job
        self.watcher: asyncio.Future | None = None
        self.timer = loop.call_later(min(WATCH_AFTER_S, job.deadline - time.perf_counter()), self.fire)

    def fire(self) -> None:
        job = self.job
        if job.future.done():
            return
        left = job.deadline - time.perf_counter()
        if left <= 0:
            self.batcher.cancel(job, "deadline")
            return
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self.receive())
            self.watcher.add_done_callback(self.on_receive)
        self.timer = self.loop.call_later(left, self.fire)

    def on_receive(self, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result().get("type") == "http.disconnect":
            self.batcher.cancel(self.job, "client_disconnected")

    def close(self) -> None:
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


async def _wait(state: ServiceState, receive: Any, batcher: Batcher, job: Job) -> None:
    watch = _Watch(asyncio.get_running_loop(), receive, batcher, job)
    try:
        await job.future
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
        watch.close()


async def run_generate(
    state: ServiceState, body: GenerateRequest, accept: str | None, scope: dict[str, Any], receive: Any
) -> Answer:
    """Everything the endpoint does after the body is parsed; errors are raised as ServiceError."""
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
    if raw and raw != "raw" and n != 1:
        raise ServiceError(
            406,
            "not_acceptable",
            "an image response holds one image: use JSON or application/octet-stream for more",
            "num_images",
        )
    if raw == "" and body.format == "raw":
        raise ServiceError(
            406, "not_acceptable", "raw pixels are not an image/*: accept application/octet-stream or JSON", "format"
        )
    batcher = entry.batcher
    if batcher is None or not entry.ready:
        raise _unavailable(
            state, "not_ready", f"model {entry.name} is {entry.status}" + (f": {entry.error}" if entry.error else "")
        )
    base = random.getrandbits(32) if body.seed is None else body.seed
    seeds = [(base + i) & MAX_SEED for i in range(n)]
    labels = resolve_labels(entry, body.class_labels, seeds)
    charge_images(scope, state.metrics, n)  # the API key's image rate, when it has one (429)
    fmt = raw or body.format
    try:
        job = batcher.submit(seeds, labels, t0 + s.request_timeout_s, fmt, body.quality, raw is None, raw == "raw")
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
    timing = b"queue;dur=%.3f, inference;dur=%.3f, encode;dur=%.3f, total;dur=%.3f"
    headers = [
        (b"server-timing", timing % (queue_ms, infer_ms, enc_ms, total_ms)),
        (b"x-batch-size", b"%d" % job.batch_size),
        (b"x-model-version", (entry.version or "").encode()),  # the entry looked up above: its batcher ran this
    ]
    if raw is not None:
        headers.append((b"x-seed", b"%d" % seeds[0]))
        if raw == "raw":  # every image's pixels, N x H x W x C
            c, h, w = entry.config.img_shape if entry.config is not None else (0, 0, 0)
            headers.append((b"x-shape", b"%d,%d,%d,%d" % (n, h, w, c)))
            headers.append((b"x-dtype", RAW_DTYPE.encode()))
            if labels is not None:
                headers.append((b"x-class-labels", ",".join(map(str, labels)).encode()))
        elif labels is not None:
            headers.append((b"x-class-label", b"%d" % labels[0]))
        return Answer(200, MEDIA_TYPES[fmt].encode(), blobs[0], headers)
    body_bytes = json_body(entry, seeds, labels, fmt, blobs, queue_ms, infer_ms, enc_ms, total_ms, job.batch_size)
    return Answer(200, b"application/json", body_bytes, headers)


@lru_cache(maxsize=64)
def _json_strings(values: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(json.dumps(v).encode() for v in values)


def json_body(
    entry: ModelEntry,
    seeds: list[int],
    labels: list[int] | None,
    fmt: str,
    blobs: list[bytes],
    queue_ms: float,
    infer_ms: float,
    enc_ms: float,
    total_ms: float,
    batch_size: int,
) -> bytes:
    """The ``GenerateResponse`` JSON, written directly as bytes (the base64 data is spliced in without copies
    through str); the same document ``json.dumps`` would give for the model's fields (tests/service)."""
    names = _json_strings(tuple(entry.config.class_names)) if entry.config is not None else ()
    name, version = _json_strings((entry.name, entry.version or ""))
    media = b',"media_type":"%s","data":"' % MEDIA_TYPES[fmt].encode()
    if fmt == "raw":
        c, h, w = entry.config.img_shape if entry.config is not None else (0, 0, 0)
        tail = b'","shape":[%d,%d,%d],"dtype":"%s"}' % (h, w, c, RAW_DTYPE.encode())
    else:
        tail = b'"}'
    parts = [b'{"model":', name, b',"model_version":', version, b',"images":[']
    for i, blob in enumerate(blobs):
        if i:
            parts.append(b",")
        label = None if labels is None else labels[i]
        parts.append(
            b'{"seed":%d,"class_label":%s,"class_name":%s'
            % (
                seeds[i],
                b"null" if label is None else b"%d" % label,
                names[label] if label is not None and label < len(names) else b"null",
            )
        )
        parts.append(media)
        parts.append(blob)
        parts.append(tail)
    # repr of a finite float is what json.dumps writes for it
    parts.append(
        b'],"timing":{"queue_ms":%s,"inference_ms":%s,"encode_ms":%s,"total_ms":%s,"batch_size":%d}}'
        % (
            repr(round(queue_ms, 3)).encode(),
            repr(round(infer_ms, 3)).encode(),
            repr(round(enc_ms, 3)).encode(),
            repr(round(total_ms, 3)).encode(),
            batch_size,
        )
    )
    return b"".join(parts)


class Answer:
    """A complete response as two ASGI messages, without Starlette's ``Response`` machinery (header
    normalisation, background tasks), which costs more per request than this endpoint's own work."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, media_type: bytes, body: bytes, headers: list[tuple[bytes, bytes]]):
        self.status = status
        self.body = body
        self.headers = [(b"content-type", media_type), (b"content-length", b"%d" % len(body)), *headers]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class GenerateEndpoint:
    """POST /v1/generate and /generate as an ASGI app: read the body, parse it with ``GenerateRequest``, run
    ``run_generate``, and answer every error with the one error schema (FastAPI's handlers are not on this path).
    """

    def __init__(self, state: ServiceState):
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
            log.exception("unhandled error on POST %s", scope["path"])
            response = error_response(500, "internal_error", f"internal error ({type(e).__name__})")
        await response(scope, receive, send)


class GenerateFastPath:
    """Hands POST /v1/generate and /generate to the endpoint before FastAPI's middleware and routing.

    The same endpoint is what the app's routes for these paths hold, so this only skips layers; every other
    request (other paths, other methods) passes through to the app.
    """

    def __init__(self, app: Any, endpoint: GenerateEndpoint):
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in GENERATE_PATHS and scope["method"] == "POST":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _parse(body: bytes, content_type: str | None) -> GenerateRequest:
    if not body:
        raise ServiceError(422, "validation_error", "body: Field required", "body")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ServiceError(
            422, "validation_error", "body: expected a JSON object with Content-Type: application/json", "body"
        )
    return GenerateRequest.model_validate_json(body)


_DESCRIPTION = (
    "JSON in, JSON out (base64 images with seeds, classes and timings). With `Accept: image/png` (or image/jpeg, "
    "image/webp) and one image, the response is the image's bytes, with its seed and class in the X-Seed and "
    "X-Class-Label headers. For machines, `format: raw` returns each image's uint8 pixels without encoding "
    "(base64 in the JSON, with shape [H, W, C] and dtype), and `Accept: application/octet-stream` returns every "
    "image's pixels as the whole body: an N x H x W x C uint8 array in C order, described by the X-Shape "
    "(N,H,W,C) and X-Dtype headers, the first seed in X-Seed (image i has seed + i) and the classes in "
    "X-Class-Labels. Successful responses carry Server-Timing, X-Batch-Size and X-Model-Version headers; every "
    "response carries X-Request-ID."
)


def _header(kind: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": kind}}


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /v1/generate and /generate as OpenAPI path items, and the component schemas they refer to.

    FastAPI documents its routes from their signatures; this endpoint is plain ASGI, so its document is built
    here from the same pydantic models it parses and answers with (``OnestepApp.openapi`` merges it in).
    """
    refs, defs = models_json_schema(
        [(GenerateRequest, "validation"), (GenerateResponse, "serialization"), (ErrorResponse, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    error = {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}
    image = {"schema": {"type": "string", "format": "binary"}}
    paths = {}
    for path in GENERATE_PATHS:
        responses: dict[str, Any] = {
            "200": {
                "description": "The images as JSON; with `Accept: image/...` and one image, its bytes; with "
                "`Accept: application/octet-stream`, every image's uint8 pixels.",
                "headers": {
                    "Server-Timing": _header("string", "queue, inference, encode and total time (ms).", True),
                    "X-Batch-Size": _header("integer", "Size of the largest batch the images ran in.", True),
                    "X-Model-Version": _header("string", "Version of the model that made the images.", True),
                    "X-Seed": _header("integer", "Image and octet-stream responses: the (first) image's seed."),
                    "X-Class-Label": _header("integer", "Image responses: its class (conditional models)."),
                    "X-Class-Labels": _header(
                        "string", "Octet-stream responses: every image's class, comma-separated (conditional models)."
                    ),
                    "X-Shape": _header("string", "Octet-stream responses: the pixels' shape N,H,W,C (C order)."),
                    "X-Dtype": _header("string", "Octet-stream responses: the pixels' type, uint8."),
                },
                "content": {
                    "application/json": {"schema": refs[(GenerateResponse, "serialization")]},
                    **{media_type: image for media_type in MEDIA_TYPES.values()},
                },
            }
        }
        for code, doc in ERROR_RESPONSES.items():
            responses[str(code)] = {"description": doc["description"], "content": error}
        responses["401"]["headers"] = {"WWW-Authenticate": _header("string", "Bearer", True)}
        responses["503"]["headers"] = {"Retry-After": _header("integer", "Seconds to wait before retrying.", True)}
        responses["429"]["headers"] = {"Retry-After": _header("integer", "Seconds until the bucket refills.", True)}
        request_id = _header("string", "The client's X-Request-ID when valid (1-128 printable chars), else new.", True)
        for response in responses.values():
            response["headers"] = {**response.get("headers", {}), "X-Request-ID": request_id}
        alias = path != GENERATE_PATHS[0]
        paths[path] = {
            "post": {
                "tags": ["generate"],
                "summary": "Generate images in one network evaluation" + (f" ({GENERATE_PATHS[0]})" if alias else ""),
                "description": _DESCRIPTION + (f" The same endpoint as POST {GENERATE_PATHS[0]}." if alias else ""),
                "operationId": "generate" + path.replace("/", "_") + "_post",  # FastAPI's naming
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": refs[(GenerateRequest, "validation")]}},
                },
                "responses": responses,
            }
        }
    return paths, defs.get("$defs", {})
