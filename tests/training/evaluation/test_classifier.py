import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError
from training.datasets import open_dataset
from training.evaluation.classifier import (
    DEFAULT_CLASSIFIER,
    Classifier,
    ClassifierConfig,
    TrainOptions,
    accuracy,
    augment,
    find_classifier,
    load_classifier,
    read_classifier_config,
    save_classifier,
    train_classifier,
)

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "fmnist-classifier"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def small(**kw) -> Classifier:
    torch.manual_seed(0)
    cfg = dict(img_resolution=16, img_channels=1, num_classes=10, widths=(8, 16), blocks=(1, 1), feature_dim=32)
    cfg.update(kw)
    return Classifier(ClassifierConfig(**cfg)).eval()


def test_forward_and_features_shapes():
    net = small()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    assert net(x).shape == (5, 10)
    f = net.features(x)
    assert f.shape == (5, 32) and (f >= 0).all()
    assert torch.allclose(net.head(f), net(x))  # eval: dropout is off, logits = head(features)


def test_other_resolutions_are_resized_and_channels_checked():
    net = small()
    assert net.features(torch.zeros(2, 1, 28, 28)).shape == (2, 32)
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(2, 3, 16, 16))
    rgb = small(img_channels=3, img_resolution=32)
    assert rgb(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_save_load_round_trip(tmp_path):
    net = small()
    # Non-trivial batch-norm statistics must survive the round trip too.
    net.train()
    net(torch.randn(8, 1, 16, 16))
    net.eval()
    save_classifier(net, tmp_path / "clf", extra={"test_accuracy": 0.5})
    assert (tmp_path / "clf" / "classifier.safetensors").is_file()
    config = read_classifier_config(tmp_path / "clf")
    assert config["test_accuracy"] == 0.5 and config["architecture"]["feature_dim"] == 32
    loaded = load_classifier(tmp_path / "clf")
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(loaded(x), net(x))
    assert torch.equal(loaded.features(x), net.features(x))


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="train-classifier"):
        load_classifier(tmp_path / "missing")
    save_classifier(small(), tmp_path / "clf")
    weights = tmp_path / "clf" / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_classifier(tmp_path / "clf")
    cfg_path = tmp_path / "clf" / "config.json"
    cfg_path.write_text(json.dumps({"kind": "generator"}))
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(tmp_path / "clf")


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randn(6, 1, 12, 12)
    a = augment(x, 2, True, torch.Generator().manual_seed(1))
    b = augment(x, 2, True, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment(x, 0, False, torch.Generator()), x)
    # A shift by +-s moves content: a zero shift keeps the centre pixel's neighbourhood in the padded frame.
    shifted = augment(x, 1, False, torch.Generator().manual_seed(3))
    assert not torch.equal(shifted, x)


def test_a_few_training_steps_on_synthetic_data():
    train = open_dataset("synthetic:64", split="train")
    test = open_dataset("synthetic:32", split="test")
    opts = TrainOptions(epochs=1, batch_size=16, max_steps=3, arch=dict(widths=(8, 16), blocks=(1, 1), feature_dim=16))
    model, summary = train_classifier(train, test, opts, log=lambda s: None)
    assert summary["steps"] == 3 and summary["images_seen"] == 48
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["test_accuracy"] == pytest.approx(accuracy(model, test), abs=1e-4)
    assert not model.training


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="models/fmnist-classifier not built")
def test_shipped_classifier_meets_its_accuracy_target():
    config = read_classifier_config(SHIPPED)
    assert config["test_accuracy"] >= 0.92
    assert (SHIPPED / config["weights"]).stat().st_size < 5 * 1024 * 1024
    net = load_classifier(SHIPPED)
    if FMNIST_DIR.is_dir():
        test = open_dataset("fmnist", split="test")
        # A 1000-image slice of the test set: the recorded accuracy is measured on all 10000.
        images, labels = test.get_batch(list(range(1000)))
        acc = float((net(images).argmax(1) == labels).float().mean())
        assert acc >= 0.9


def test_find_classifier_falls_back_to_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_classifier(DEFAULT_CLASSIFIER) == SHIPPED
    (tmp_path / "models" / "fmnist-classifier").mkdir(parents=True)
    assert find_classifier(DEFAULT_CLASSIFIER) == Path(DEFAULT_CLASSIFIER)  # the working dir comes first
    assert find_classifier(tmp_path / "elsewhere") == tmp_path / "elsewhere"
