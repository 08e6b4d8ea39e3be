"""The ``python -m training.evaluate`` command line: its outputs, exit codes and messages."""

import json

import pytest
import torch

from tests.training.evaluation.helpers import make_models
from training.evaluate import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("eval"))


def test_end_to_end_report(models, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "--model", f"teacher={models['teacher']}",
            "--model", str(models["generator"]),
            "--model", f"d2o-f={models['run']}",
            "--classifier", str(models["classifier"]),
            "--out", str(out),
            "--num-samples", "20",
            "--batch", "10",
            "--nfe", "1,3",
            "--kid-subsets", "5",
            "--kid-subset-size", "10",
            "--seeds", "7",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    for name in ("report.md", "metrics.json", "fd_vs_nfe.png", "samples.png", "spectra.png", "fd_vs_images.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"] == "synthetic:64" and m["metric_name"] == "FD-SYN"
    rows = {(r["label"], r["nfe"]): r for r in m["results"]}
    assert set(rows) == {("real (train split)", None), ("teacher", 1), ("teacher", 3), ("gen", 1), ("d2o-f", 1)}
    for r in m["results"]:
        assert r["fd"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert r["class_accuracy"] is not None
    assert rows[("teacher", 3)]["images_seen"] == 1000
    assert [p["images_seen"] for p in m["curves"]["d2o-f"]] == [48, 2048]
    assert m["curves"]["d2o-f"][-1]["fd"] == rows[("d2o-f", 1)]["fd"]
    assert set(m["spectra"]) == {"real", "teacher (NFE 3)", "gen (1 step)", "d2o-f (1 step)"}
    assert m["summary"]["teacher_best"]["nfe"] in (1, 3)
    report = (out / "report.md").read_text()
    assert "| FD-SYN |" in report and "fd_vs_images.png" in report and "d2o-f" in report

    # Same seed, same numbers: the evaluation is reproducible.
    out2 = tmp_path / "again"
    rc = main(
        ["--model", str(models["generator"]), "--classifier", str(models["classifier"]), "--out", str(out2),
         "--num-samples", "20", "--batch", "20", "--kid-subsets", "5", "--kid-subset-size", "10", "--seeds", "7"]
    )  # fmt: skip
    assert rc == 0
    again = {r["label"]: r for r in json.loads((out2 / "metrics.json").read_text())["results"]}
    assert again["gen"]["fd"] == pytest.approx(rows[("gen", 1)]["fd"], rel=1e-6)


def test_missing_inception_file_is_a_clear_error(models, tmp_path, capsys):
    rc = main(
        ["--model", str(models["generator"]), "--classifier", str(models["classifier"]), "--out", str(tmp_path / "o"),
         "--num-samples", "8", "--inception", str(tmp_path / "pt_inception.pth")]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "--inception" in err and "pt_inception.pth" in err and "not found" in err


def test_bad_arguments(models, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(models["teacher"]), "--out", str(tmp_path / "o"), "--nfe", "x"])
    rc = main(
        ["--model", str(models["teacher"]), "--classifier", str(models["classifier"]), "--out", str(tmp_path / "o"),
         "--nfe", "2"]
    )  # fmt: skip
    assert rc == 2 and "odd" in capsys.readouterr().err


def test_missing_classifier_names_the_command(models, tmp_path, capsys):
    rc = main(
        ["--model", str(models["generator"]), "--classifier", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
         "--num-samples", "8"]
    )  # fmt: skip
    assert rc == 2 and "train-classifier" in capsys.readouterr().err


def test_runs_as_a_module():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "train-classifier" in out.stdout and "report" in out.stdout


def test_train_classifier_command(tmp_path):
    from training.evaluation.classifier import load_classifier, read_classifier_config

    out = tmp_path / "clf"
    args = ["train-classifier", "--data", "synthetic:40", "--out", str(out), "--epochs", "1", "--batch", "8"]
    args += ["--max-steps", "2", "--widths", "8,16", "--blocks", "1,1", "--feature-dim", "16"]
    assert main(args) == 0
    config = read_classifier_config(out)
    assert config["metric_name"] == "FD-SYNTHETIC" and config["dataset"]["spec"] == "synthetic:40"
    assert len(config["class_names"]) == 10 and 0 <= config["test_accuracy"] <= 1
    assert config["training"]["steps"] == 2 and config["architecture"]["widths"] == [8, 16]
    # Continue from it: the architecture comes from the init dir, the earlier training is recorded.
    assert main(["train-classifier", "--data", "synthetic:40", "--out", str(tmp_path / "more"), "--init", str(out),
                 "--epochs", "1", "--batch", "8", "--max-steps", "1"]) == 0  # fmt: skip
    more = read_classifier_config(tmp_path / "more")
    assert more["training"]["init"]["steps"] == 2 and more["architecture"]["feature_dim"] == 16
    assert load_classifier(tmp_path / "more").features(torch.zeros(1, 1, 16, 16)).shape == (1, 16)
