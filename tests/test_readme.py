"""The README is the user's entry point: its commands and settings table must match the code."""

from pathlib import Path

import pytest

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        assert f"`ONESTEP_{name.upper()}`" in README, name


def test_ci_runs_exactly_the_readme_test_command():
    assert "bash scripts/test.sh" in README
    assert "exec bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert 'rc" -eq 5' in (REPO / "scripts" / "test.sh").read_text()


def test_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python example, run on the bundled model (its files are written into a temporary dir)."""
    start = README.index("```python\nfrom training.generation import OneStepPipeline")
    code = README[start + len("```python\n") : README.index("```", start + 10)]
    code = code.replace('"models/fmnist-d2o"', repr(str(REPO / "models" / "fmnist-d2o")))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (2, 28, 28, 1) and len(namespace["pils"]) == 4
    assert (tmp_path / "seed0.png").is_file()


def test_model_card_front_matter_usage_and_figures():
    """The bundled model's card: YAML front matter (licence, data set, metrics) whose figures are the card's own,
    intended use, limitations, and usage snippets for the service, the client and training.generate."""
    yaml = pytest.importorskip("yaml")
    card = (REPO / "models" / "fmnist-d2o" / "card.md").read_text()
    assert card.startswith("---\n")
    front_text, body = card[4:].split("\n---\n", 1)
    front = yaml.safe_load(front_text)
    assert front["license"] == "apache-2.0" and front["datasets"] == ["fashion_mnist"] and front["metrics"]
    metrics = [m for result in front["model-index"][0]["results"] for m in result["metrics"]]
    assert {m["value"] for m in metrics} >= {0.289, 0.753}  # test-range FD and recall of the shipped model
    for m in metrics:
        assert f"{m['value']:.3f}" in body, m  # the front matter repeats the card's measured figures
    for heading in ("## Intended use", "## Limitations", "## Usage"):
        assert heading in body, heading
    assert "curl" in body and "/v1/generate" in body and "OnestepClient" in body and "training.generate" in body
    start = body.index("```python\nfrom training.generation import OneStepPipeline")
    code = body[start + len("```python\n") : body.index("```", start + 10)]
    namespace: dict = {}
    exec(compile(code.replace('"models/fmnist-d2o"', repr(str(REPO / "models" / "fmnist-d2o"))), "card.md", "exec"),
         namespace)  # fmt: skip
    assert namespace["images"].shape == (2, 28, 28, 1)
