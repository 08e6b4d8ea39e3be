"""``python -m service``: serve with uvicorn, configured by ONESTEP_* environment variables."""

from __future__ import annotations

import os

# Spinning OpenMP workers burn the CPU the event loop and encoders need on small shared machines; must be set
# before torch (imported by the app) starts its thread pool. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402

from service.config import Settings  # noqa: E402


def main() -> None:
    s = Settings()
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=s.host,
        port=s.port,
        workers=s.workers,
        log_level=s.log_level,
        access_log=s.access_log,
        timeout_graceful_shutdown=s.graceful_timeout_s,
    )


if __name__ == "__main__":
    main()
