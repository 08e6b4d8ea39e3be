"""The README is the user's entry point: its commands and settings table must match the code."""

from pathlib import Path

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        assert f"`ONESTEP_{name.upper()}`" in README, name


def test_ci_runs_exactly_the_readme_test_command():
    assert "bash scripts/test.sh" in README
    assert "exec bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "rc\" -eq 5" in (REPO / "scripts" / "test.sh").read_text()
