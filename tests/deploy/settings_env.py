"""Check ONESTEP_* variables set by deploy files against the service's Settings (service/config.py)."""

from __future__ import annotations

import os

import pytest

from service.config import Settings

PREFIX = "ONESTEP_"


def known_variables() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def check_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> Settings:
    """Every ONESTEP_* name is a setting, and the service accepts the values: Settings() parses them."""
    ours = {k: v for k, v in env.items() if k.startswith(PREFIX)}
    unknown = set(ours) - known_variables()
    assert not unknown, f"{where}: not settings of the service: {sorted(unknown)}"
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            m.delenv(key)
        for key, value in ours.items():
            m.setenv(key, value)
        return Settings()
