import json

import pytest
import torch

from tests.conftest import tiny_denoiser
from training.checkpoint import CheckpointError, load_model, load_state, read_config, save_model, save_state
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
    config = read_config(tmp_path / "m")
    assert config["kind"] == "generator" and config["class_names"] == list("abcdefghij")
    assert config["sigma"] == 80.0


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
        read_config(tmp_path / "t")


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
