"""``create_app(settings)``: the FastAPI app, wired from small parts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from service.config import Settings
from service.errors import install_error_handlers
from service.lifespan import ServiceState, lifespan
from service.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestMetricsMiddleware
from service.routes import generate, health, metrics, models, playground
from service.routes.generate import GenerateFastPath

DESCRIPTION = """One-step image generation (D2O/D2O-F generators) with dynamic request batching.

Errors always have the shape `{"error": {"type", "message", "field"}}`.
"""


class OnestepApp(FastAPI):
    """FastAPI with the service's guards and the POST /generate fast path outside FastAPI's own middleware.

    Requests pass request metrics -> API key -> body limit -> /generate fast path, then FastAPI (error
    handlers, routing) for everything else: the hot path skips layers that cost more CPU than a small model.
    """

    def build_middleware_stack(self) -> Any:
        app = super().build_middleware_stack()
        state: ServiceState = self.state.service
        s = state.settings
        app = GenerateFastPath(app, state)
        app = BodyLimitMiddleware(app, max_bytes=s.max_body_bytes, metrics=state.metrics)
        if s.api_keys:
            app = ApiKeyMiddleware(app, keys=s.api_keys, exempt=s.auth_exempt_paths, metrics=state.metrics)
        return RequestMetricsMiddleware(app, metrics=state.metrics)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    app = OnestepApp(title="onestep", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = ServiceState(settings)
    install_error_handlers(app)
    for module in (generate, models, health, metrics, playground):
        app.include_router(module.router)
    if playground.STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=playground.STATIC_DIR), name="static")
    return app
