"""Admin endpoints: reload one model or all of them while serving. Guarded by admin keys (``admin_keys``,
``admin_keys_file``), which are never API keys; with no admin key configured the endpoints answer 404."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.auth import bearer_token, match_key
from service.errors import ErrorResponse, ServiceError
from service.lifespan import ReloadResult, ServiceState

log = logging.getLogger("service")
router = APIRouter(tags=["admin"])


class ReloadOutcome(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    action: Literal["added", "reloaded", "unchanged", "removed", "failed", "not_found"] = Field(
        description="added: a new model dir now serves; reloaded: a new version replaced the old; unchanged: config "
        "and weights are the same (force=true reloads anyway); removed: its dir is gone, so is the model; failed: "
        "the new version was refused and the old one, if any, keeps serving."
    )
    version: str | None = Field(description="The version serving now (weights hash, after config.json's version).")
    previous_version: str | None = Field(description="The version that served before.")
    error: str | None = Field(description="Why a reload failed.")
    seconds: float = Field(description="Time to read, load, warm up and switch.")


class ReloadReport(BaseModel):
    object: Literal["reload"] = "reload"
    results: list[ReloadOutcome]


def require_admin(request: Request) -> str:
    """The admin key's name; 404 when no admin key is configured, 403 for an API key, 401 otherwise."""
    state: ServiceState = request.app.state.service
    if not state.admin_keys:
        raise ServiceError(
            404, "not_found", "the admin endpoints are off: set ONESTEP_ADMIN_KEYS or ONESTEP_ADMIN_KEYS_FILE"
        )
    token = bearer_token(request.scope["headers"])
    key = match_key(token, state.admin_keys)
    if key is not None:
        return key.name
    if match_key(token, state.api_keys) is not None:
        raise ServiceError(403, "forbidden", "an API key is not an admin key")
    state.metrics.reject("unauthorized")
    raise ServiceError(
        401,
        "unauthorized",
        "missing or invalid admin key (Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


Admin = Annotated[str, Depends(require_admin)]
Force = Annotated[bool, Query(description="Reload even when config.json and the weights are unchanged.")]

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin key."},
    403: {"model": ErrorResponse, "description": "An API key was sent: the admin endpoints take admin keys only."},
    404: {
        "model": ErrorResponse,
        "description": "No admin key is configured (the endpoints are off), or no such model.",
    },
    422: {
        "model": ErrorResponse,
        "description": "A new version was refused (it does not load, warm up or produce images of the config's "
        "shape); what served before keeps serving.",
    },
}


def _report(results: list[ReloadResult]) -> ReloadReport:
    return ReloadReport(results=[ReloadOutcome(**vars(r)) for r in results])


def _refused(results: list[ReloadResult]) -> ServiceError:
    failed = [r for r in results if r.action == "failed"]
    done = [f"{r.model} {r.action}" + (f" ({r.version})" if r.version else "") for r in results if r.action != "failed"]
    message = "; ".join(
        f"model {r.model}: reload refused: {r.error}"
        + (f"; version {r.previous_version} keeps serving" if r.previous_version else "")
        for r in failed
    )
    if done:
        message += "; the others: " + ", ".join(done)
    return ServiceError(422, "reload_failed", message, "model" if len(results) == 1 else None)


@router.post(
    "/v1/models/reload",
    response_model=ReloadReport,
    summary="Reload every model (admin)",
    description="Reads models_dir again: loads model dirs that were added, reloads those whose config.json or "
    "weights changed, removes models whose dir is gone. Each new version loads and warms up beside the old one, "
    "then replaces it between batches; requests already queued finish on the version they were queued with. "
    "422 when any model was refused (the message says which; the others are done).",
    responses=_ERRORS,
)
async def reload_all(request: Request, admin: Admin, force: Force = False) -> ReloadReport:
    state: ServiceState = request.app.state.service
    log.info("reload of every model asked by admin key %s", admin)
    results = await state.reload(None, force=force)
    if any(r.action == "failed" for r in results):
        raise _refused(results)
    return _report(results)


@router.post(
    "/v1/models/{name}/reload",
    response_model=ReloadReport,
    summary="Reload one model (admin)",
    description="Loads the model dir models_dir/{name} as it is now (a new dir is added, a missing one removed), "
    "warms it up beside the version that serves, then switches between batches. 422 when the new version is "
    "refused; the old one keeps serving.",
    responses=_ERRORS,
)
async def reload_one(request: Request, name: str, admin: Admin, force: Force = False) -> ReloadReport:
    state: ServiceState = request.app.state.service
    log.info("reload of model %s asked by admin key %s", name, admin)
    results = await state.reload([name], force=force)
    if not results:
        raise ServiceError(422, "reload_failed", f"models_dir/{name} is not a generator's model dir", "model")
    if results[0].action == "not_found":
        raise ServiceError(404, "model_not_found", f"no model {name!r} and no model dir of that name", "model")
    if results[0].action == "failed":
        raise _refused(results)
    return _report(results)
