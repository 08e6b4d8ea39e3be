"""A bare uvicorn app that answers every POST with one canned response: the HTTP stack's own per-request floor.

``benchmarks.service --null-model`` captures one real ``POST /v1/generate`` answer (status, headers, body) and
``GET /v1/models`` from the service, then serves them from this app under the same uvicorn settings as
``python -m service`` (uvloop, httptools, no access log), in a process of its own started with
``python -c`` (see ``benchmarks.service.spawn_bare``). The load generator then sends the same requests to both,
so the difference between the two is what the service itself adds per request.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any


class CannedApp:
    """ASGI app: POST -> the canned generate answer (after reading the body), GET /v1/models -> the canned listing,
    anything else 404."""

    def __init__(self, canned: dict[str, Any]):
        gen = canned["generate"]
        self.status = int(gen["status"])
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in gen["headers"]]
        self.body = base64.b64decode(gen["body"])
        self.models = json.dumps(canned["models"]).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
            status, headers, body = self.status, self.headers, self.body
        elif scope["path"] in ("/v1/models", "/readyz"):
            status, body = 200, self.models if scope["path"] == "/v1/models" else b'{"status":"ready"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        else:
            status, body = 404, b""
            headers = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def serve(port: int, canned_path: str) -> None:
    """Run the canned app on 127.0.0.1:``port`` with the service's uvicorn settings (``python -m service``)."""
    import uvicorn

    canned = json.loads(Path(canned_path).read_text())
    uvicorn.run(CannedApp(canned), host="127.0.0.1", port=port, log_level="warning", access_log=False)
