"""``python -m service --check``: load and warm up every model as the server would, report, and exit.

For CI and image builds: a model that cannot be served fails the check before any traffic reaches it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

from service.auth import KeyFileError
from service.config import Settings
from service.lifespan import ServiceState


@dataclass(frozen=True)
class ModelCheck:
    name: str
    backend: str
    status: str
    error: str | None
    version: str | None = None  # weights hash, after config.json's version
    license: str | None = None


@dataclass(frozen=True)
class CheckReport:
    ok: bool
    models: list[ModelCheck]
    reason: str
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


async def check_models(settings: Settings) -> CheckReport:
    """Start the service's state (load + warm-up on its own threads), wait for it, shut it down."""
    started = time.perf_counter()
    try:
        state = ServiceState(settings)
    except KeyFileError as e:  # names the file and line, never a key
        return CheckReport(False, [], f"keys: {e}", round(time.perf_counter() - started, 3))
    await state.start()
    try:
        if state._loader is not None:
            await state._loader
        ok, reason = state.readiness()
        models = [
            ModelCheck(
                e.name,
                e.backend_name,
                e.status,
                e.error,
                e.version,
                e.config.resolved_license[0] if e.config is not None else None,
            )
            for e in state.models.values()
        ]
    finally:
        await state.shutdown()
    return CheckReport(ok, models, reason, round(time.perf_counter() - started, 3))


def run_check(settings: Settings) -> int:
    report = asyncio.run(check_models(settings))
    print(report.to_json())
    return 0 if report.ok else 1
