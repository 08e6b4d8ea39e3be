"""Plain ASGI middleware (cheaper per request than BaseHTTPMiddleware): request metrics, API keys, body size."""

from __future__ import annotations

import hmac
import time
from typing import Any

from service.errors import ServiceError, send_error
from service.metrics import Metrics

Scope = dict[str, Any]
MODEL_SCOPE_KEY = "onestep.model"
GENERATE_PATHS = ("/v1/generate", "/generate")  # the endpoint, then its documented alias


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
    """``Authorization: Bearer <key>`` checked in constant time against every configured key."""

    def __init__(self, app: Any, keys: list[str], exempt: list[str], metrics: Metrics):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.exempt = frozenset(exempt)
        self.metrics = metrics

    def _authorized(self, scope: Scope) -> bool:
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
                break
        ok = False
        for key in self.keys:  # compare with every key: timing reveals nothing about which matched
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        self.metrics.reject("unauthorized")
        await send_error(
            send,
            401,
            "unauthorized",
            "missing or invalid API key (Authorization: Bearer <key>)",
            {"WWW-Authenticate": "Bearer"},
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
