"""Settings come from ONESTEP_* environment variables; lists accept JSON or commas."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_defaults() -> None:
    s = Settings()
    assert s.models_dir == Path("models") and s.default_model == "fmnist-d2o" and s.backend == "auto"
    assert (s.max_batch_size, s.max_wait_ms, s.max_queue_images, s.max_images_per_request) == (32, 5.0, 256, 64)
    assert s.max_body_bytes == 64 * 1024 and s.api_keys == []
    assert s.auth_exempt_paths == ["/", "/healthz", "/readyz", "/metrics"]
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} needs a description (the README table is built from them)"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONESTEP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("ONESTEP_BACKEND", "onnxruntime")
    monkeypatch.setenv("ONESTEP_MODEL_BACKENDS", '{"a": "torch"}')
    monkeypatch.setenv("ONESTEP_API_KEYS", "k1, k2")
    monkeypatch.setenv("ONESTEP_AUTH_EXEMPT_PATHS", '["/healthz"]')
    monkeypatch.setenv("ONESTEP_WARMUP", "false")
    s = Settings()
    assert s.max_batch_size == 8 and s.api_keys == ["k1", "k2"] and s.auth_exempt_paths == ["/healthz"]
    assert s.backend_for("a") == "torch" and s.backend_for("b") == "onnxruntime" and s.warmup is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ONESTEP_BACKEND", "tflite"),
        ("ONESTEP_MAX_BATCH_SIZE", "0"),
        ("ONESTEP_API_KEYS", "a,,b,"),
        ("ONESTEP_PORT", "x"),
        ("ONESTEP_ENCODE_OVERLAP", "sometimes"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    if value == "a,,b,":  # empty items are dropped, not turned into empty keys
        assert Settings().api_keys == ["a", "b"]
        return
    with pytest.raises(ValidationError, match=name.removeprefix("ONESTEP_").lower()):
        Settings()


@pytest.mark.parametrize(
    ("raw", "mode"), [("auto", "auto"), ("ON", "on"), ("off", "off"), ("true", "on"), ("0", "off"), ("no", "off")]
)
def test_encode_overlap_accepts_modes_and_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, mode: str) -> None:
    monkeypatch.setenv("ONESTEP_ENCODE_OVERLAP", raw)
    assert Settings().encode_overlap == mode
    assert Settings(encode_overlap=mode == "on").encode_overlap == ("on" if mode == "on" else "off")


def test_auto_backend_follows_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: torch with a CUDA GPU; else ONNX Runtime when it and the exporter's packages import; else torch.
    Explicit names, per-model overrides included, are kept as given; null is only ever served when named."""
    import importlib.util

    import torch

    from service import config

    real_find_spec = importlib.util.find_spec
    missing: set[str] = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name))
    s = Settings(model_backends={"b": "torch", "n": "null"})
    for cuda, gone, expected in (
        (True, set(), "torch"),
        (False, set(), "onnxruntime"),
        (False, {"onnxruntime"}, "torch"),
        (False, {"onnxscript"}, "torch"),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        missing.clear()
        missing.update(gone)
        assert config.auto_backend() == expected
        assert s.backend_for("a") == expected and s.backend_for("b") == "torch" and s.backend_for("n") == "null"
    assert Settings(backend="onnxruntime").backend_for("a") == "onnxruntime"
