"""One JSON error schema for every 4xx/5xx: ``{"error": {"type", "message", "field"}}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

log = logging.getLogger("service")

_DEFAULT_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    499: "client_disconnected",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. validation_error, queue_full, not_ready, timeout.")
    message: str = Field(description="What went wrong, for people.")
    field: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ServiceError(HTTPException):
    """An error that becomes an ``ErrorResponse``. Subclasses starlette's so FastAPI re-raises it untouched."""

    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status_code, detail=message, headers=headers)
        self.type = type
        self.message = message
        self.field = field


def error_payload(type: str, message: str, field: str | None = None) -> bytes:
    return json.dumps({"error": {"type": type, "message": message, "field": field}}).encode()


def error_response(
    status: int, type: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(error_payload(type, message, field), status, headers=headers, media_type="application/json")


async def send_error(send: Any, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
    """Send an error from plain ASGI middleware (before any app code runs)."""
    body = error_payload(type, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    if not parts or not isinstance(parts[0], str):
        return str(loc[0]) if loc else None
    return parts[0]


def validation_error_response(errors: Sequence[Any]) -> Response:
    """422 from pydantic-style errors (``loc`` starting with 'body' as FastAPI reports them)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    messages = []
    for err in errors[:5]:
        name = _field_of(tuple(err.get("loc", ()))) or "request"
        messages.append(f"{name}: {err.get('msg', 'invalid')}")
    if len(errors) > 5:
        messages.append(f"... and {len(errors) - 5} more")
    return error_response(422, "validation_error", "; ".join(messages), field)


async def _validation_handler(request: Request, exc: RequestValidationError) -> Response:
    return validation_error_response(exc.errors())


async def _http_handler(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ServiceError):
        return error_response(exc.status_code, exc.type, exc.message, exc.field, exc.headers)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.url.path}"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(status, _DEFAULT_TYPES.get(status, "error"), message, None, exc.headers)


async def _unhandled_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(HTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled_handler)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong API key (only when keys are configured).",
        404: "Unknown model.",
        406: "Accept asks for a raw image but the request has more than one image.",
        413: "Too many images or too large a body.",
        422: "A field is missing, of the wrong type or out of range.",
        429: "The API key is over its rate (requests or images per second); retry after Retry-After seconds.",
        503: "Queue full or model not ready; retry after Retry-After seconds.",
        504: "The request deadline passed before its images were generated.",
    }.items()
}
