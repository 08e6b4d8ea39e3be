"""Plain ASGI middleware (cheaper per request than BaseHTTPMiddleware): request IDs and access logs, request
metrics, API keys with per-key request rates, body size."""

from __future__ import annotations

import math
import time
from typing import Any

from service.auth import ApiKey, bearer_token, match_key
from service.errors import ServiceError, send_error
from service.logs import REQUEST_ID, access_log, new_request_id, valid_request_id
from service.metrics import Metrics

Scope = dict[str, Any]
MODEL_SCOPE_KEY = "onestep.model"
KEY_SCOPE_KEY = "onestep.key"  # the ApiKey that authorised the request (its name labels metrics and logs)
REQUEST_ID_SCOPE_KEY = "onestep.request_id"
GENERATE_PATHS = ("/v1/generate", "/generate")  # the endpoint, then its documented alias
ADMIN_RELOAD_ALL = "/v1/models/reload"


def is_admin_path(path: str) -> bool:
    """POST /v1/models/reload and /v1/models/{name}/reload: guarded by admin keys (in their route), not API keys."""
    return path == ADMIN_RELOAD_ALL or (path.startswith("/v1/models/") and path.endswith("/reload"))


class RequestContextMiddleware:
    """The outermost layer: every HTTP response carries X-Request-ID (the client's when it is 1-128 printable
    characters, else a new uuid4 hex). With ``json_logs`` it is also the ``REQUEST_ID`` context of every log record
    written while serving it, and with ``access_log`` one access record per request is written."""

    def __init__(self, app: Any, json_logs: bool = False, access_log: bool = False):
        self.app = app
        self.json_logs = json_logs or access_log
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value if valid_request_id(value) else b""
                break
        text = rid.decode("ascii") if rid else new_request_id()
        header = (b"x-request-id", rid or text.encode())
        scope[REQUEST_ID_SCOPE_KEY] = text
        token = REQUEST_ID.set(text) if self.json_logs else None
        start = time.perf_counter()
        status, version = 500, None

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), header]
                if self.access_log:
                    version = next((v.decode() for k, v in headers if k == b"x-model-version"), None)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                self._log(scope, status, time.perf_counter() - start, version)
            if token is not None:
                REQUEST_ID.reset(token)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, version: str | None) -> None:
        client = scope.get("client")
        key = scope.get(KEY_SCOPE_KEY)
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "model": scope.get(MODEL_SCOPE_KEY),
            "model_version": version,
            "key": key.name if key is not None else None,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=fields)


class RequestMetricsMiddleware:
    """Times POST /v1/generate (and /generate) from first byte in to last byte out, by model and status."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.histogram = metrics.request_duration
        self._children: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATE_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            key = (scope.get(MODEL_SCOPE_KEY, "unknown"), status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(key[0], str(status))
            child.observe(time.perf_counter() - start)


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` checked in constant time against every configured key; the matching key goes
    into the scope (its name labels logs and metrics). A key with a request rate pays one token per POST to the
    generate endpoint, or gets 429 + Retry-After. The admin paths are left to their route (admin keys)."""

    def __init__(self, app: Any, keys: list[ApiKey], exempt: list[str], metrics: Metrics):
        self.app = app
        self.keys = keys
        self.exempt = frozenset(exempt)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or is_admin_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = match_key(bearer_token(scope["headers"]), self.keys)
        if key is None:
            self.metrics.reject("unauthorized")
            await send_error(
                send,
                401,
                "unauthorized",
                "missing or invalid API key (Authorization: Bearer <key>)",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        scope[KEY_SCOPE_KEY] = key
        if key.requests is not None and scope["method"] == "POST" and scope["path"] in GENERATE_PATHS:
            wait = key.requests.take(1)
            if wait:
                self.metrics.rate_limit(key.name, "requests")
                await send_error(
                    send,
                    429,
                    "rate_limited",
                    f"API key {key.name!r} is over its {key.limits.rps:g} requests/s; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
                return
        await self.app(scope, receive, send)


def charge_images(scope: Scope, metrics: Metrics, n: int) -> None:
    """Take ``n`` images from the request's key's image bucket, or raise 413 (more than the bucket ever holds)
    or 429 + Retry-After (not yet refilled). No-op without keys or without an image rate."""
    key: ApiKey | None = scope.get(KEY_SCOPE_KEY)
    if key is None or key.images is None:
        return
    if n > key.images.capacity:
        metrics.reject("too_large")
        raise ServiceError(
            413,
            "too_large",
            f"num_images {n} is over API key {key.name!r}'s image burst {key.images.capacity:g}",
            "num_images",
        )
    wait = key.images.take(n)
    if wait:
        metrics.rate_limit(key.name, "images")
        raise ServiceError(
            429,
            "rate_limited",
            f"API key {key.name!r} is over its {key.limits.ips:g} images/s; retry in {wait:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length before reading, else while streaming."""

    def __init__(self, app: Any, max_bytes: int, metrics: Metrics):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    self.metrics.reject("too_large")
                    await send_error(send, 413, "too_large", f"request body over {limit} bytes")
                    return
                break
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.metrics.reject("too_large")
                    raise ServiceError(413, "too_large", f"request body over {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
