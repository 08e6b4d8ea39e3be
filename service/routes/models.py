"""GET /v1/models: what this server serves, in which state, which version and under which licence."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ERROR_RESPONSES
from service.lifespan import ServiceState
from service.schemas import ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, summary="List models", responses={401: ERROR_RESPONSES[401]})
async def list_models(request: Request) -> ModelList:
    state: ServiceState = request.app.state.service
    data = []
    for entry in state.models.values():
        cfg = entry.config
        batcher = entry.batcher
        pref = entry.backend.preferred_batch_sizes if entry.backend is not None else None
        data.append(
            ModelInfo(
                id=entry.name,
                default=entry.name == state.default_model,
                status=entry.status,
                error=entry.error,
                backend=entry.backend_name,
                img_resolution=cfg.img_resolution if cfg is not None else 0,
                img_channels=cfg.img_channels if cfg is not None else 0,
                label_dim=entry.label_dim,
                class_names=entry.class_names,
                max_batch_size=batcher.max_batch_size if batcher is not None else state.settings.max_batch_size,
                preferred_batch_sizes=list(pref) if pref else None,
                version=entry.version,
                weights_sha256=entry.weights_sha256,
                license=cfg.resolved_license[0] if cfg is not None else None,
                license_url=cfg.resolved_license[1] if cfg is not None else None,
                origin=cfg.resolved_origin if cfg is not None else None,
                reload_error=entry.reload_error,
            )
        )
    return ModelList(default=state.default_model, data=data)
