"""Scores of any image set: ``python -m training.evaluate score`` and ``ref``, statistics files, the choice of
feature space, and the classifier that is never overwritten by accident."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.training.evaluation.helpers import make_models
from training.evaluate import main
from training.evaluation.classifier import Classifier, ClassifierConfig, save_classifier
from training.evaluation.features import choose_features
from training.evaluation.imagesets import RefSpec, open_images, parse_ref
from training.evaluation.metrics import FeatureStats
from training.evaluation.stats import MomentAccumulator, ReferenceStats
from training.generate import main as generate

FAST = ["--kid-subsets", "5", "--kid-subset-size", "10", "--batch", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    m = make_models(root)
    # 40 generated images as an .npz (with labels) and as a folder of PNGs (per-thousand subfolders).
    assert generate([str(m["generator"]), "--seeds", "0-39", "--npz", str(root / "gen.npz"), "--no-progress"]) == 0
    args = [str(m["generator"]), "--seeds", "0-39", "--outdir", str(root / "png"), "--subdirs", "--no-progress"]
    assert generate(args) == 0
    with np.load(root / "gen.npz") as f:
        np.savez(root / "uncond.npz", images=f["images"], labels=np.full(40, -1), seeds=f["seeds"])
    m.update(npz=root / "gen.npz", png=root / "png", uncond=root / "uncond.npz")
    return m


def test_moments_match_numpy():
    x = np.random.default_rng(0).normal(size=(103, 7)) * 3 + 5
    acc = MomentAccumulator()
    for start in range(0, 103, 10):
        acc.update(x[start : start + 10])
    s, ref = acc.stats(), FeatureStats.of(x)
    assert s.count == 103 and np.allclose(s.mu, ref.mu) and np.allclose(s.sigma, ref.sigma, atol=1e-10)


def test_parse_ref(models, tmp_path):
    assert parse_ref("fmnist:test") == RefSpec("data", "fmnist", "test")
    assert parse_ref("fmnist") == RefSpec("data", "fmnist", None)
    assert parse_ref("cifar10:/data/c10:train") == RefSpec("data", "cifar10:/data/c10", "train")
    assert parse_ref("cifar10:/data/c10") == RefSpec("data", "cifar10:/data/c10", None)
    assert parse_ref(str(models["png"])) == RefSpec("data", str(models["png"]), None)
    assert parse_ref(str(models["npz"])).kind == "images"


def test_image_sets(models):
    npz = open_images(models["npz"])
    assert (npz.count, npz.resolution, npz.channels, npz.conditional) == (40, 16, 1, True)
    assert npz.labels is not None and len(npz.labels) == 40
    png = open_images(models["png"])
    assert (png.count, png.labels, png.conditional) == (40, None, None)  # subfolders are not classes
    first_npz, first_png = next(npz.batches(40)), next(png.batches(40))
    assert first_npz.shape == (40, 1, 16, 16) and np.array_equal(first_npz.numpy(), first_png.numpy())
    assert open_images(models["uncond"]).conditional is False


def test_choose_features(models):
    clf, teacher = str(models["classifier"]), str(models["teacher"])
    kw = dict(data="synthetic:64", classifier=clf, teacher=teacher, inception=None)
    assert choose_features("auto", labelled=True, conditional=True, **kw).kind == "classifier"
    assert choose_features("auto", labelled=True, conditional=False, **kw).kind == "teacher"
    assert choose_features("auto", labelled=False, conditional=True, **kw).kind == "teacher"
    kw_inc = {**kw, "teacher": None, "inception": "pt_inception.pth"}
    assert choose_features("auto", labelled=False, conditional=True, **kw_inc).kind == "inception"
    with pytest.raises(ValueError, match="--teacher"):
        choose_features("auto", labelled=False, conditional=False, **{**kw, "teacher": None})
    with pytest.raises(ValueError, match="train-classifier"):  # labelled data, but no classifier at all
        choose_features("auto", labelled=True, conditional=True, **{**kw, "classifier": "nope", "teacher": None})
    with pytest.raises(ValueError, match="--features inception needs --inception"):
        choose_features("inception", labelled=True, conditional=True, **kw)
    # The bundled Fashion-MNIST classifier does not judge another data set: label-free features instead.
    other = choose_features(
        "auto", labelled=True, conditional=True, **{**kw, "data": "cifar10:x", "classifier": "models/fmnist-classifier"}
    )
    assert other.kind == "teacher" and "trained on fmnist" in other.reason


def test_ref_then_score_equals_scoring_against_the_data(models, tmp_path, capsys):
    stats = tmp_path / "stats.npz"
    rc = main(["ref", "--data", "synthetic:64", "--split", "train", "--out", str(stats),
               "--classifier", str(models["classifier"]), "--batch", "16", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    saved = ReferenceStats.load(stats)
    assert saved.stats.count == 64 and saved.features.shape == (64, 16)
    assert saved.extractor["kind"] == "classifier" and saved.data["split"] == "train"
    capsys.readouterr()

    out = tmp_path / "scores.json"
    assert main(["score", "--images", str(models["npz"]), "--ref", str(stats), "--out", str(out), *FAST]) == 0
    printed = json.loads(capsys.readouterr().out)
    from_stats = json.loads(out.read_text())
    assert printed == from_stats
    assert from_stats["metric_name"] == "FD-SYN" and from_stats["count"] == 40
    assert from_stats["features"]["kind"] == "classifier" and from_stats["class_accuracy"] is not None
    args = ["score", "--images", str(models["npz"]), "--ref", "synthetic:64:train", *FAST]
    assert main([*args, "--classifier", str(models["classifier"])]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["fd"] == pytest.approx(from_stats["fd"], rel=1e-6)
    assert direct["precision"] == from_stats["precision"] and direct["recall"] == from_stats["recall"]
    # A folder of the same images scores the same (no labels: no class accuracy).
    assert main(["score", "--images", str(models["png"]), "--ref", str(stats), *FAST]) == 0
    png = json.loads(capsys.readouterr().out)
    assert png["fd"] == pytest.approx(from_stats["fd"], rel=1e-6) and png["class_accuracy"] is None


def test_statistics_from_another_extractor_are_refused(models, tmp_path, capsys):
    stats = tmp_path / "stats.npz"
    assert main(["ref", "--data", "synthetic:64", "--out", str(stats), "--classifier", str(models["classifier"]),
                 "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    rc = main(["score", "--images", str(models["npz"]), "--ref", str(stats), "--features", "teacher",
               "--teacher", str(models["teacher"]), *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "feature spaces" in err and "python -m training.evaluate ref" in err
    # Another classifier's weights are another feature space, even with the same architecture.
    torch.manual_seed(1)
    other = Classifier(ClassifierConfig(img_resolution=16, widths=(8, 16), blocks=(1, 1), feature_dim=16)).eval()
    save_classifier(other, tmp_path / "other-clf", extra={"metric_name": "FD-SYN"})
    rc = main(["score", "--images", str(models["npz"]), "--ref", str(stats), "--classifier",
               str(tmp_path / "other-clf"), *FAST])  # fmt: skip
    assert rc == 2 and "feature spaces" in capsys.readouterr().err
    # The same weights elsewhere are the same space.
    shutil.copytree(models["classifier"], tmp_path / "copy")
    assert main(["score", "--images", str(models["npz"]), "--ref", str(stats), "--classifier",
                 str(tmp_path / "copy"), *FAST]) == 0  # fmt: skip


def test_unconditional_sets_take_label_free_features(models, capsys):
    rc = main(["score", "--images", str(models["uncond"]), "--ref", "synthetic:64", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "unconditional" in err and "--teacher" in err and "--inception" in err
    rc = main(["score", "--images", str(models["uncond"]), "--ref", "synthetic:64", "--teacher",
               str(models["teacher"]), *FAST])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric_name"] == "FD-teacher" and result["features"]["kind"] == "teacher"
    assert "needs no labels" in result["features"]["reason"] and result["class_accuracy"] is None


def test_paper_protocol(models, tmp_path, capsys):
    rc = main(["score", "--images", str(models["npz"]), "--ref", "synthetic:64", "--protocol", "paper",
               "--classifier", str(models["classifier"]), *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "50000" in err and "--seeds 200000-249999" in err and "64 train images" in err
    rc = main(["score", "--images", str(models["npz"]), "--ref", "synthetic:64:test", "--protocol", "paper", *FAST])
    assert rc == 2 and "training set" in capsys.readouterr().err
    rc = main(["--model", str(models["generator"]), "--out", str(tmp_path / "r"), "--protocol", "paper",
               "--num-samples", "20"])  # fmt: skip
    assert rc == 2 and "--protocol paper samples 50000" in capsys.readouterr().err


def test_report_with_unlabelled_data_says_which_features(models, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["--model", str(models["teacher"]), "--model", str(models["generator"]), "--data", str(models["png"]),
               "--out", str(out), "--num-samples", "16", "--nfe", "1", "--no-curve", *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["features"]["kind"] == "teacher" and m["metric_name"] == "FD-teacher" and m["classifier"] is None
    report = (out / "report.md").read_text()
    assert "Features: the encoder of the teacher" in report and "needs no labels" in report
    assert m["reference_split"] is None and "drawn from the reference folder itself" in report  # no splits
    assert all(r["class_accuracy"] is None for r in m["results"])


def test_train_classifier_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "clf"
    args = ["train-classifier", "--data", "synthetic:40", "--out", str(out), "--epochs", "1", "--batch", "8",
            "--max-steps", "1", "--widths", "8,16", "--blocks", "1,1", "--feature-dim", "8"]  # fmt: skip
    assert main(args) == 0
    before = (out / "classifier.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*args, "--seed", "3"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "classifier.safetensors").read_bytes() == before
    assert main([*args, "--seed", "3", "--force"]) == 0
    assert (out / "classifier.safetensors").read_bytes() != before
