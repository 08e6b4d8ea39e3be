"""Request IDs and structured (JSON) logs.

The request ID of the request being served lives in a context variable (set by ``RequestContextMiddleware``), so
that every log record written while serving it, by any module, carries it. ``log_format=json`` writes one JSON
object a line; ``uvicorn_log_config`` is the logging config ``python -m service`` hands to uvicorn for it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("onestep_request_id", default=None)
MAX_REQUEST_ID = 128
#: Fields an access or error record may carry (``log.info(..., extra={...})``), written as JSON keys.
RECORD_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "model", "model_version", "key", "client")

access_log = logging.getLogger("service.access")


def valid_request_id(value: bytes) -> bool:
    """A client's X-Request-ID is kept when it is 1-128 printable ASCII characters."""
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.decode("ascii").isprintable()


def new_request_id() -> str:
    """A random version-4 UUID in hex, as ``uuid.uuid4().hex`` gives it, without building the UUID object (which
    costs several times more per request)."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & ~(0xF000 << 64) | (4 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)  # version 4, RFC 4122 variant
    return f"{n:032x}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the request ID, any RECORD_FIELDS, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        for name in RECORD_FIELDS[1:]:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any] | None:
    """The ``log_config`` for ``uvicorn.run``: None (uvicorn's own text format) or JSON lines on stderr for
    uvicorn's loggers, the service's and the root logger."""
    if log_format != "json":
        return None
    level = level.upper()
    handler = ["json"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": handler, "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": handler, "level": level, "propagate": False},
            "service": {"handlers": handler, "level": level, "propagate": False},
        },
        "root": {"handlers": handler, "level": "WARNING"},
    }
