"""``python -m service``: help, flags over environment over defaults, bad values, and ``--check``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import build_parser, env_name, flag_name, settings_from_argv
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def run_service(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ONESTEP_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


def test_help_prints_every_setting_and_exits_zero() -> None:
    done = run_service("--help", timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for field in Settings.model_fields:
        assert flag_name(field) in text and env_name(field) in text, field
    assert "--check" in text and "--no-warmup" in text
    assert "Uvicorn running" not in done.stdout + done.stderr  # it did not start a server


@pytest.fixture
def clean_env() -> Iterator[None]:
    """No ONESTEP_* variables during the test; the environment as it was afterwards (flags write into it)."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("ONESTEP_")]:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_flags_override_environment_which_overrides_defaults(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONESTEP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("ONESTEP_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("ONESTEP_WARMUP", "false")
    args, s = settings_from_argv(["--max-batch-size", "16", "--api-keys", "k1,k2", "--warmup", "--port", "9001"])
    assert not args.check
    assert s.max_batch_size == 16  # flag beats environment
    assert s.max_wait_ms == 2.5  # environment beats default
    assert s.warmup is True and s.api_keys == ["k1", "k2"] and s.port == 9001
    assert s.request_timeout_s == Settings.model_fields["request_timeout_s"].default  # default
    # The flags reach the environment, so uvicorn's workers (which read it) see the same settings.
    assert os.environ["ONESTEP_MAX_BATCH_SIZE"] == "16" and os.environ["ONESTEP_WARMUP"] == "true"
    _, s = settings_from_argv(["--no-torch-jit", "--model-backends", '{"a": "onnxruntime"}'])
    assert s.torch_jit is False and s.backend_for("a") == "onnxruntime"


def test_every_setting_has_a_flag() -> None:
    options = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert {flag_name(f) for f in Settings.model_fields} <= options


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--max-batch-size", "0"], ["--max-batch-size", "ONESTEP_MAX_BATCH_SIZE", "greater than or equal to 1"]),
        (["--backend", "tensorflow"], ["--backend", "ONESTEP_BACKEND"]),
        (["--port", "many"], ["--port", "integer"]),
        (["--no-such-flag"], ["unrecognized arguments"]),
    ],
)
def test_bad_values_exit_two_with_the_flag_named(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    with pytest.raises(SystemExit) as info:
        settings_from_argv(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


@pytest.mark.slow
def test_check_loads_and_warms_every_model(models_dir: Path) -> None:
    done = run_service("--check", "--models-dir", str(models_dir), "--max-batch-size", "4", "--backend", "torch")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["reason"] == "ready"
    assert {m["name"] for m in report["models"]} == {p.name for p in models_dir.iterdir()} - {"some-classifier"}
    assert all(m["status"] == "ready" and m["error"] is None for m in report["models"])
    assert all(len(m["version"]) == 12 and m["license"] == "Apache-2.0" for m in report["models"])


@pytest.mark.slow
def test_check_fails_when_a_model_cannot_load(models_dir: Path, tmp_path: Path) -> None:
    good = next(p for p in models_dir.iterdir() if p.name != "some-classifier")
    shutil.copytree(good, tmp_path / "good")
    shutil.copytree(good, tmp_path / "broken")
    weights = next((tmp_path / "broken").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated weights
    args = ("--models-dir", str(tmp_path), "--max-batch-size", "2", "--default-model", "good", "--backend", "torch")
    done = run_service("--check", *args)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    status = {m["name"]: m for m in report["models"]}
    assert status["good"]["status"] == "ready"
    assert status["broken"]["status"] == "failed" and status["broken"]["error"]
    assert "broken" in report["reason"]


def test_check_fails_without_models(tmp_path: Path) -> None:
    done = run_service("--check", "--models-dir", str(tmp_path / "none"))
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False


def test_check_fails_on_a_bad_key_file(models_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:secret-1\nbob secret-2\n")
    done = run_service("--check", "--models-dir", str(models_dir), env={"ONESTEP_API_KEYS_FILE": str(keys)})
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False and "line 2: expected name:key" in report["reason"]
    assert "secret" not in done.stdout + done.stderr
