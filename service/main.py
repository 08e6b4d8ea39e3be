"""``create_app(settings)``: the FastAPI app, wired from small parts."""

from __future__ import annotations

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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    app = FastAPI(title="onestep", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    state = ServiceState(settings)
    app.state.service = state
    install_error_handlers(app)
    # Added innermost first: requests pass metrics -> API key -> body limit -> /generate fast path -> routes.
    app.add_middleware(GenerateFastPath, state=state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=state.metrics)
    if settings.api_keys:
        app.add_middleware(
            ApiKeyMiddleware, keys=settings.api_keys, exempt=settings.auth_exempt_paths, metrics=state.metrics
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    for module in (generate, models, health, metrics, playground):
        app.include_router(module.router)
    if playground.STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=playground.STATIC_DIR), name="static")
    return app
