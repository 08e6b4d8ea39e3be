import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_denoiser
from training.checkpoint import (
    EDM_LICENSE,
    EDM_LICENSE_URL,
    PROJECT_LICENSE,
    CheckpointError,
    ModelConfig,
    ModelKindError,
    load_model,
    load_state,
    read_model_config,
    save_model,
    save_state,
)
from training.precond import D2OPrecond, EDMPrecond, OneStepGenerator


def test_generator_round_trip_gives_identical_outputs(tmp_path):
    gen = OneStepGenerator(tiny_denoiser(precond=D2OPrecond))
    save_model(gen, tmp_path / "m", class_names=list("abcdefghij"))
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, OneStepGenerator)
    assert isinstance(loaded.denoiser, D2OPrecond)
    z = torch.randn(3, 1, 16, 16)
    y = torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(gen(z, y), loaded(z, y))
    config = read_model_config(tmp_path / "m")
    assert config.kind == "generator" and config.class_names == tuple("abcdefghij")
    assert config.sigma == 80.0


def test_denoiser_round_trip_keeps_edm_key_names(tmp_path):
    net = tiny_denoiser()
    save_model(net, tmp_path / "t")
    loaded = load_model(tmp_path / "t")
    assert type(loaded) is EDMPrecond
    assert set(loaded.state_dict()) == set(net.state_dict())
    assert all(k.startswith("model.") for k in net.state_dict())
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.5, 3.0])
    labels = torch.eye(10)[:2]
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), loaded(x, sigma, labels))


def test_truncated_weights_fail_clearly(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "t")
    weights = tmp_path / "t" / "denoiser.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(tmp_path / "t")
    # Without the recorded hash, safetensors itself must refuse the truncated file.
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    del cfg["weights_sha256"]
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "t")


def test_tampered_weights_and_config_fail_clearly(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "t")
    weights = tmp_path / "t" / "denoiser.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "t")


def test_weights_that_do_not_fit_the_config_fail(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["precond_kwargs"]["model_channels"] = 32
    del cfg["weights_sha256"]
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "t")


def test_missing_dir_and_unknown_version(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")
    save_model(tiny_denoiser(), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version"):
        read_model_config(tmp_path / "t")


def test_training_state_round_trip_and_refuses_pickled_code(tmp_path):
    state = {"a": torch.arange(3), "nested": {"lr": 0.1, "list": [1, 2]}}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert torch.equal(back["a"], state["a"]) and back["nested"] == state["nested"]
    torch.save({"obj": EvilReduce(tmp_path / "pwned")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable training snapshot"):
        load_state(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:50])
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "trunc.pt")


class EvilReduce:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


# ---------------------------------------------------------------- the typed model config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_model_config_reads_and_writes_back_unchanged():
    path = REPO / "models" / "fmnist-d2o"
    raw = json.loads((path / "config.json").read_text())
    config = read_model_config(path)
    assert (config.kind, config.precond, config.img_shape, config.label_dim) == ("generator", "d2o", (1, 28, 28), 10)
    assert config.class_names[0] == "T-shirt/top" and config.sigma == config.generator_sigma == 80.0
    assert config.images_seen == 60000 and config.dataset_spec == "fmnist"
    assert config.images_seen <= 0.05 * config.training["teacher"]["images_seen"]  # within the 5% budget
    assert config.training["teacher"]["snapshot"] == "network-snapshot-001202"
    assert config.to_json() == raw and list(config.to_json()) == list(raw)
    with pytest.raises(ModelKindError, match="classifier"):
        read_model_config(REPO / "models" / "fmnist-classifier")


def test_save_model_writes_the_same_keys_and_keeps_extra_ones(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "t", extra={"imported_from": {"file": "x.pkl"}, "training": {"a": 1}})
    raw = json.loads((tmp_path / "t" / "config.json").read_text())
    assert list(raw) == [
        "format_version", "name", "kind", "precond", "precond_kwargs", "img_resolution", "img_channels",
        "label_dim", "class_names", "weights", "weights_sha256", "training", "license", "license_url",
        "imported_from",
    ]  # fmt: skip
    config = read_model_config(tmp_path / "t")
    assert config.extra == {"imported_from": {"file": "x.pkl"}} and config.images_seen is None
    assert config.license == PROJECT_LICENSE and config.origin is None  # no stage, no import format: unknown
    assert config.sigma is None and config.generator_sigma == 80.0 and config.name == "t"
    assert config.precond_kwargs["sigma_max"] == "inf" and config.build().sigma_max == float("inf")
    assert ModelConfig.from_json(config.to_json()) == config
    assert config.to_json() == raw  # written back as read
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.label_dim = 3
    with pytest.raises(TypeError):
        config.precond_kwargs["model_channels"] = 3  # read-only, as the whole config
    # A file whose shape is only in precond_kwargs (no top-level copy) still reads.
    for key in ("img_resolution", "img_channels", "label_dim"):
        del raw[key]
    assert ModelConfig.from_json(raw).img_shape == (1, 16, 16)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(kind="teacher"), "field 'kind' must be one of"),
        (dict(kind=None), "field 'kind'"),
        (dict(precond="vp"), "field 'precond' must be one of"),
        (dict(precond_kwargs=[1]), "field 'precond_kwargs' must be a JSON object"),
        (dict(img_resolution="16"), "field 'img_resolution' must be an integer"),
        (dict(img_channels=0), "field 'img_channels' must be an integer >= 1"),
        (dict(label_dim=True), "field 'label_dim' must be an integer"),
        (dict(label_dim=4), "field 'label_dim' is 4 but precond_kwargs.label_dim is 10"),
        (dict(class_names=["a", "b"]), "field 'class_names' has 2 names for label_dim 10"),
        (dict(class_names="abc"), "field 'class_names' must be a list of strings"),
        (dict(weights=None), "field 'weights' is missing"),
        (dict(weights="../other.safetensors"), "field 'weights' must be a file name inside the model dir"),
        (dict(weights_sha256="abc"), "field 'weights_sha256' must be 64 lowercase hex digits"),
        (dict(sigma=-1), "field 'sigma' must be a positive number"),
        (dict(training=[]), "field 'training' must be a JSON object"),
        (dict(format_version=2), "format_version 2 is not supported"),
    ],
)
def test_bad_model_config_fields_name_the_file_and_the_field(tmp_path, change, message):
    save_model(tiny_denoiser(), tmp_path / "t")
    path = tmp_path / "t" / "config.json"
    raw = {k: v for k, v in json.loads(path.read_text()).items() if change.get(k, 0) is not None}
    raw.update({k: v for k, v in change.items() if v is not None})
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_model(tmp_path / "t")
    assert str(path) in str(err.value)


def test_kinds_filter_raises_model_kind_error_first(tmp_path):
    save_model(tiny_denoiser(), tmp_path / "t")
    raw = json.loads((tmp_path / "t" / "config.json").read_text())
    raw["format_version"] = 99  # not even looked at: the kind decides first
    with pytest.raises(ModelKindError) as err:
        ModelConfig.from_json(raw, kinds=("generator",))
    assert err.value.kind == "denoiser"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": "fmnist", "batch": 64}))  # a run dir's
    with pytest.raises(ModelKindError, match="field 'kind'"):
        read_model_config(tmp_path / "run")


# ---------------------------------------------------------------- licence, origin and version


def test_shipped_model_without_licence_fields_reads_as_the_projects(tmp_path):
    """The shipped model records its licence; a config written before licences were recorded (the same one with
    the fields taken out) still reads as the project's own work."""
    shipped = read_model_config(REPO / "models" / "fmnist-d2o")
    assert shipped.license == PROJECT_LICENSE == "Apache-2.0"
    old = json.loads((REPO / "models" / "fmnist-d2o" / "config.json").read_text())
    for key in ("license", "license_url", "origin", "version"):
        old.pop(key, None)
    for key in ("license", "license_url", "origin"):
        old["training"]["teacher"].pop(key, None)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    config = read_model_config(tmp_path / "old")
    assert config.license is None and config.version is None
    assert config.resolved_license[0] == PROJECT_LICENSE
    assert config.resolved_origin.startswith("fine-tuned by onestep (training.finetune) from teacher: runs/")


def test_licence_follows_the_weights_origin(tmp_path):
    """An EDM import is CC-BY-NC-SA-4.0; a fine-tune of it inherits that; our own training is Apache-2.0."""
    imported = {"imported_from": {"format": "edm-pickle", "file": "e.pkl"}}
    edm = save_model(tiny_denoiser(), tmp_path / "edm", extra=imported)
    ours = save_model(tiny_denoiser(), tmp_path / "ours", extra={"training": {"stage": "pretrain"}})
    edm_cfg, ours_cfg = read_model_config(edm), read_model_config(ours)
    assert (edm_cfg.license, edm_cfg.license_url) == (EDM_LICENSE, EDM_LICENSE_URL)
    assert EDM_LICENSE == "CC-BY-NC-SA-4.0"
    assert "e.pkl" in edm_cfg.origin and "NVlabs/edm" in edm_cfg.origin
    assert ours_cfg.license == "Apache-2.0" and ours_cfg.origin == "pre-trained by onestep (training.pretrain)"

    gen = OneStepGenerator(tiny_denoiser(precond=D2OPrecond))
    for teacher_cfg, teacher_dir, want in ((edm_cfg, edm, EDM_LICENSE), (ours_cfg, ours, PROJECT_LICENSE)):
        spdx, url = teacher_cfg.resolved_license
        teacher = {"model_dir": str(teacher_dir), "license": spdx, "license_url": url, "origin": teacher_cfg.origin}
        training = {"stage": "finetune", "teacher": teacher}
        out = save_model(gen, tmp_path / f"g-{teacher_dir.name}", extra={"training": training})
        cfg = read_model_config(out)
        assert cfg.license == want and cfg.license_url == url
        assert cfg.origin == f"fine-tuned by onestep (training.finetune) from teacher: {teacher_cfg.origin}"

    # Older files name no licence: the same rules apply when they are read.
    for path in (edm, tmp_path / "g-edm"):
        raw = json.loads((path / "config.json").read_text())
        for key in ("license", "license_url", "origin"):
            raw.pop(key)
        old = ModelConfig.from_json(raw)
        assert old.license is None and old.resolved_license == (EDM_LICENSE, EDM_LICENSE_URL)


def test_explicit_licence_version_and_origin_are_kept(tmp_path):
    extra = {"license": "MIT", "license_url": "https://example.org/mit", "origin": "a lab", "version": "1.2.0"}
    cfg = read_model_config(save_model(tiny_denoiser(), tmp_path / "t", extra=extra))
    assert {k: getattr(cfg, k) for k in extra} == extra
    assert cfg.extra == {} and ModelConfig.from_json(cfg.to_json()) == cfg
    raw = cfg.to_json() | {"version": 3}
    with pytest.raises(CheckpointError, match="field 'version' must be a non-empty string"):
        ModelConfig.from_json(raw)
    with pytest.raises(CheckpointError, match="field 'version' must be 1-64 printable ASCII"):
        ModelConfig.from_json(raw | {"version": "1.0 beta"})
