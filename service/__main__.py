"""``python -m service``: serve with uvicorn; flags mirror the ONESTEP_* settings (``--help`` lists them)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from service.cli import settings_from_argv

    args, s = settings_from_argv(argv)
    if args.check:
        from service.check import run_check

        return run_check(s)

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from service.logs import uvicorn_log_config

    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=s.host,
        port=s.port,
        workers=s.workers,
        log_level=s.log_level,
        log_config=uvicorn_log_config(s.log_format, s.log_level) or LOGGING_CONFIG,
        access_log=s.access_log and s.log_format == "text",  # json: the service writes its own, with request IDs
        timeout_graceful_shutdown=s.graceful_timeout_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
