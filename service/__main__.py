"""``python -m service``: serve with uvicorn, configured by ONESTEP_* environment variables."""

from __future__ import annotations

import uvicorn

from service.config import Settings


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
