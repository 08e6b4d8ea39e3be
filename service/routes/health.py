"""GET /healthz (the process answers) and GET /readyz (every model loaded, warmed up and its worker alive)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ERROR_RESPONSES, ErrorResponse, ServiceError
from service.lifespan import ServiceState
from service.schemas import HealthStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthStatus, summary="Liveness", responses={401: ERROR_RESPONSES[401]})
async def healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    summary="Readiness",
    responses={
        401: ERROR_RESPONSES[401],
        503: {"model": ErrorResponse, "description": "A model is loading or failed, or its worker stopped."},
    },
)
async def readyz(request: Request) -> HealthStatus:
    state: ServiceState = request.app.state.service
    ok, reason = state.readiness()
    if not ok:
        raise ServiceError(503, "not_ready", reason, headers={"Retry-After": str(state.settings.retry_after_s)})
    return HealthStatus(status="ready", models={e.name: e.status for e in state.models.values()})
