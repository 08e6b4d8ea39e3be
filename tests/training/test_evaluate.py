import json

import pytest
import torch

from training.checkpoint import CheckpointError, save_model
from training.classifier import Classifier, ClassifierConfig, save_classifier
from training.configs import network_config
from training.evaluate import (
    balanced_labels,
    class_ordered,
    generator_fn,
    main,
    resolve_source,
    snapshot_dirs,
)
from training.precond import D2OPrecond, EDMPrecond, OneStepGenerator

CLASSES = [f"c{i}" for i in range(10)]


def _denoiser(cls=EDMPrecond, seed=0):
    torch.manual_seed(seed)
    kw = network_config("tiny")
    model_type = kw.pop("model_type")
    net = cls(img_resolution=16, img_channels=1, label_dim=10, model_type=model_type, **kw)
    # Freshly initialised EDM U-Nets output zeros (zero-init last layers): perturb them so samples depend on noise.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def _training(stage: str, images_seen: int) -> dict:
    return {
        "dataset": {"spec": "synthetic:64", "resolution": 16},
        "training": {"stage": stage, "images_seen": images_seen},
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    teacher = save_model(_denoiser(), root / "teacher", class_names=CLASSES, extra=_training("pretrain", 1000))
    generator = save_model(
        OneStepGenerator(_denoiser(D2OPrecond)), root / "gen", class_names=CLASSES, extra=_training("finetune", 64)
    )
    run = root / "runs" / "00001-tiny-d2o-f"
    run.mkdir(parents=True)
    (run / "stats.jsonl").write_text("{}\n")
    for kimg, seed in ((0, 0), (2, 1)):
        save_model(
            OneStepGenerator(_denoiser(D2OPrecond, seed)),
            run / f"network-snapshot-{kimg:06d}",
            class_names=CLASSES,
            extra=_training("finetune", kimg * 1000 + 48),
        )
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(img_resolution=16, widths=(8, 16), blocks=(1, 1), feature_dim=16)).eval()
    save_classifier(clf, root / "clf", extra={"metric_name": "FD-SYN", "test_accuracy": 0.1})
    return {"root": root, "teacher": teacher, "generator": generator, "run": run, "classifier": root / "clf"}


def test_snapshot_reader_and_source_resolution(models, tmp_path):
    snaps = snapshot_dirs(models["run"])
    assert [s[0] for s in snaps] == [48, 2048]
    src = resolve_source(f"d2o-f={models['run']}")
    assert src.label == "d2o-f" and src.kind == "generator" and src.run_dir == models["run"]
    assert src.model_dir.name == "network-snapshot-000002" and src.images_seen == 2048
    assert resolve_source(str(models["teacher"])).kind == "denoiser"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    # Without training.images_seen in its config, a snapshot's kimg comes from its name.
    bare = tmp_path / "run"
    save_model(OneStepGenerator(_denoiser(D2OPrecond)), bare / "network-snapshot-000005")
    assert snapshot_dirs(bare)[0][0] == 5000


def test_sampling_is_seeded_and_batch_independent(models):
    from training.checkpoint import load_model

    model = load_model(models["teacher"])
    seeds = list(range(100, 106))
    labels = balanced_labels(6, 10)
    fn = generator_fn(model, "denoiser", 3, seeds, labels, "cpu")
    full = fn(0, 6)
    parts = torch.cat([fn(0, 2), fn(2, 6)])
    assert torch.allclose(full, parts, rtol=1e-4, atol=1e-3)
    assert torch.equal(fn(0, 6), full)


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
            "--seed", "7",
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
         "--num-samples", "20", "--batch", "20", "--kid-subsets", "5", "--kid-subset-size", "10", "--seed", "7"]
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


def test_class_ordered_grid_indices():
    labels = torch.tensor([2, 0, 0, 1, 2, 1])
    assert class_ordered(labels, 5, 3).tolist() == [1, 3, 0, 2, 5]
    assert class_ordered(labels, 3, 0).tolist() == [0, 1, 2]


def test_runs_as_a_module():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "train-classifier" in out.stdout and "report" in out.stdout


def test_train_classifier_command(tmp_path):
    from training.classifier import load_classifier, read_classifier_config

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
