"""Command-line flags for ``python -m service``, made from the settings so that the two never drift apart.

Every ``Settings`` field gets a flag (``max_batch_size`` -> ``--max-batch-size``; booleans also get
``--no-...``). A given flag is written into the process environment as its ``ONESTEP_*`` variable before the
settings are read, so flags override the environment, the environment overrides the defaults, values are
parsed and validated in one place, and uvicorn's worker processes (which build the app from the environment)
see the same settings.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from pydantic import ValidationError

from service.config import Settings

ENV_PREFIX = "ONESTEP_"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return "(unset)" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve one-step generators over HTTP with request batching. Every flag mirrors an ONESTEP_* "
        "environment variable; a flag wins over the variable, which wins over the default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="load and warm up every model, print a report and exit (status 1 if any model fails or none is found)",
    )
    group = parser.add_argument_group("settings")
    for field, info in Settings.model_fields.items():
        text = f"{info.description or ''} [env {env_name(field)}; default {_default_text(field)}]"
        text = text.replace("%", "%%")
        if info.annotation is bool:
            group.add_argument(flag_name(field), dest=field, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag_name(field), dest=field, metavar=field.upper(), help=text)
    parser.set_defaults(**dict.fromkeys(Settings.model_fields))
    return parser


def _as_env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def apply_flags(args: argparse.Namespace, environ: MutableMapping[str, str]) -> dict[str, str]:
    """Write every given settings flag into ``environ``; returns what was written."""
    written = {}
    for field in Settings.model_fields:
        value = getattr(args, field)
        if value is not None:
            written[env_name(field)] = environ[env_name(field)] = _as_env_value(value)
    return written


def settings_from_argv(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    """Parse flags, write them into ``os.environ`` and read the settings; bad values exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_flags(args, os.environ)
    try:
        settings = Settings()
    except ValidationError as e:
        parser.error("; ".join(_describe(err) for err in e.errors()))
    return args, settings


def _describe(err: Mapping[str, Any]) -> str:
    field = ".".join(str(p) for p in err.get("loc", ()))
    where = f"{flag_name(field)} / {env_name(field)}" if field in Settings.model_fields else field or "settings"
    return f"{where}: {err.get('msg')}"
