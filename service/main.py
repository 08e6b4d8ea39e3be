"""``create_app(settings)``: the FastAPI app, wired from small parts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from service.config import Settings
from service.errors import install_error_handlers
from service.lifespan import ServiceState, lifespan
from service.middleware import (
    GENERATE_PATHS,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
    RequestMetricsMiddleware,
)
from service.routes import admin, health, metrics, models, playground
from service.routes.generate import GenerateEndpoint, GenerateFastPath, openapi_paths

DESCRIPTION = """One-step image generation (D2O/D2O-F generators) with dynamic request batching.

Errors always have the shape `{"error": {"type", "message", "field"}}`. Every response carries `X-Request-ID`
(the client's, when it sends a valid one). Admin endpoints (reload) take admin keys, never API keys.
"""

#: Response headers a browser may read on a CORS response.
CORS_EXPOSED = [
    "X-Request-ID",
    "X-Model-Version",
    "X-Batch-Size",
    "X-Seed",
    "X-Class-Label",
    "Server-Timing",
    "Retry-After",
]


class OnestepApp(FastAPI):
    """FastAPI with the service's guards and POST /v1/generate (alias /generate) outside FastAPI's own middleware.

    Requests pass request ID -> CORS (when origins are set) -> request metrics -> API key (and its request
    rate) -> body limit -> the generate fast path, then FastAPI (error handlers, routing) for everything else:
    the hot path skips layers that cost more CPU than a small model.
    The generate endpoint is plain ASGI, so its OpenAPI paths are merged into FastAPI's document here.
    """

    def __init__(self, state: ServiceState, **kwargs: Any):
        super().__init__(**kwargs)
        self.state.service = state
        self.generate_endpoint = GenerateEndpoint(state)
        for path in GENERATE_PATHS:  # routed too: other methods get 405, a trailing slash the redirect
            self.add_route(path, self.generate_endpoint, methods=["POST"], include_in_schema=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # POST /v1/generate goes straight to the middleware stack: FastAPI's own __call__ asks its native telemetry
        # whether OpenTelemetry is configured on every request (environment lookups: ~10-25 us a request here),
        # and the generate endpoint is not traced by it anyway (it is not a FastAPI route).
        stack = self.middleware_stack
        if stack is not None and scope["type"] == "http" and scope["path"] in GENERATE_PATHS and not self.root_path:
            scope["app"] = self
            await stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> Any:
        app = super().build_middleware_stack()
        state: ServiceState = self.state.service
        s = state.settings
        app = GenerateFastPath(app, self.generate_endpoint)
        app = BodyLimitMiddleware(app, max_bytes=s.max_body_bytes, metrics=state.metrics)
        if state.api_keys:
            app = ApiKeyMiddleware(app, keys=state.api_keys, exempt=s.auth_exempt_paths, metrics=state.metrics)
        app = RequestMetricsMiddleware(app, metrics=state.metrics)
        if s.cors_origins:  # outside the key check: a preflight carries no Authorization header
            app = CORSMiddleware(
                app,
                allow_origins=s.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
                expose_headers=CORS_EXPOSED,
                max_age=600,
            )
        json_logs = s.log_format == "json"
        return RequestContextMiddleware(app, json_logs=json_logs, access_log=json_logs and s.access_log)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            paths, schemas = openapi_paths()
            document["paths"] = {**paths, **document["paths"]}
            components = document.setdefault("components", {})
            components["schemas"] = dict(sorted({**components.get("schemas", {}), **schemas}.items()))
            self.openapi_schema = document
        return self.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    app = OnestepApp(
        ServiceState(settings), title="onestep", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app)
    for module in (models, admin, health, metrics, playground):
        app.include_router(module.router)
    if playground.STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=playground.STATIC_DIR), name="static")
    return app
