"""Typed run configs: the shipped run dir reads, defaults match the CLIs', bad values name the field and file."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from training import finetune, pretrain
from training.presets import PRESETS
from training.run_config import ConfigError, FinetuneConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[2]
TEACHER_RUN = REPO / "runs" / "00000-fmnist-teacher"


def test_the_shipped_teacher_run_config_reads_and_writes_back():
    raw = json.loads((TEACHER_RUN / "config.json").read_text())
    cfg = PretrainConfig.read(TEACHER_RUN)
    assert (cfg.arch, cfg.batch, cfg.duration, cfg.lr_rampup_kimg, cfg.desc) == (
        "fmnist",
        64,
        20000.0,
        20.0,
        "fmnist-teacher",
    )
    assert cfg.class_names[-1] == "Ankle boot"
    records = {"world_size", "parameters"}  # written beside the options, not options
    legacy = {"bf16"}  # an option since replaced (by precision)
    added = {"batch_gpu": None, "precision": "fp32"}  # options added since: defaults, and the precision it ran in
    written = cfg.to_json()
    assert {k: v for k, v in written.items() if k not in added} == {
        k: v for k, v in raw.items() if k not in records | legacy
    }
    assert {k: written[k] for k in added} == added
    assert [k for k in written if k not in added] == [k for k in raw if k not in records | legacy]
    assert PretrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("config_type", [PretrainConfig, FinetuneConfig])
def test_older_run_dirs_resume_in_the_precision_they_ran_in(config_type):
    assert config_type.from_json({}).precision == "fp32"
    assert config_type.from_json({"bf16": True}).precision == "bf16"
    assert config_type.from_json({"bf16": False, "precision": "auto"}).precision == "auto"
    assert config_type().precision == "auto" and config_type().batch_gpu is None
    with pytest.raises(ConfigError, match="precision"):
        config_type(precision="fp8")
    with pytest.raises(ConfigError, match="batch_gpu"):
        config_type(batch_gpu=0)


@pytest.mark.parametrize("cli, config_type", [(pretrain, PretrainConfig), (finetune, FinetuneConfig)])
def test_defaults_are_the_command_lines(cli, config_type):
    parser = cli.build_parser()
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    cfg = config_type()
    fields = {f.name for f in dataclasses.fields(config_type)}
    derived = {"class_names", "teacher_info"}  # filled in by the task
    assert fields - derived <= set(defaults)
    for name in fields - derived - {"desc"}:
        value = getattr(cfg, name)
        assert (list(value) if isinstance(value, tuple) else value) == defaults[name], name
    assert set(defaults) - fields == {"resume", "max_steps", "device", "threads"}


def test_preset_keys_are_finetune_fields():
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for preset in PRESETS.values():
        cfg = FinetuneConfig.from_options(preset.args)
        assert set(preset.args) <= fields and all(getattr(cfg, k) == v for k, v in preset.args.items())


def test_configs_are_frozen_typed_and_name_their_run_dir():
    cfg = FinetuneConfig.from_options({"data": "cifar10:/data", "objective": "gan+distill", "disc_sigmas": [0.5]})
    assert cfg.desc == "cifar10-gan-distill-d2o-f" and cfg.disc_sigmas == (0.5,)
    assert cfg.use_gan and cfg.use_distill and not FinetuneConfig(objective="distill").use_gan
    assert FinetuneConfig(data="x/afhqv2-64x64.zip", desc="mine").desc == "mine"
    assert PretrainConfig(data="synthetic:64", arch="tiny").desc == "synthetic-tiny"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch = 3
    moved = cfg.replace(teacher_info={"fingerprint": "abc"})
    assert moved.teacher_info["fingerprint"] == "abc" and cfg.teacher_info is None
    with pytest.raises(TypeError):
        moved.teacher_info["fingerprint"] = "x"  # read-only, as the config
    assert json.loads(json.dumps(moved.to_json()))["disc_sigmas"] == [0.5]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"objective": "wgan"}, "field 'objective' must be one of"),
        ({"freeze": "all"}, "field 'freeze' must be one of"),
        ({"batch": 0}, "field 'batch' must be >= 1"),
        ({"batch": 8.0}, "field 'batch' must be of type int"),
        ({"g_lr": "1e-4"}, "field 'g_lr' must be of type float"),
        ({"r1_interval": True}, "field 'r1_interval' must be of type int"),
        ({"disc_sigmas": [0.1, -1.0]}, "field 'disc_sigmas' must be positive"),
        ({"disc_sigmas": 0.1}, "field 'disc_sigmas' must be a list"),
        ({"teacher_info": [1]}, "field 'teacher_info' must be a JSON object"),
        ({"tick": 0}, "field 'tick' must be > 0"),
        ({"g_lr_end": -1e-5}, "field 'g_lr_end' must be >= 0"),
    ],
)
def test_bad_values_name_the_field_and_the_file(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_options(options)
    (tmp_path / "config.json").write_text(json.dumps({"teacher": "t", **options}))
    with pytest.raises(ConfigError, match=message) as err:
        FinetuneConfig.read(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)


def test_pretrain_checks_its_own_fields():
    with pytest.raises(ConfigError, match="field 'arch' must be one of"):
        PretrainConfig(arch="huge")
    with pytest.raises(ConfigError, match="field 'xflip' must be of type bool"):
        PretrainConfig.from_json({"xflip": 1})


def test_g_lr_is_constant_or_a_cosine_over_the_duration():
    assert FinetuneConfig(g_lr=2e-4).g_lr_at(0) == FinetuneConfig(g_lr=2e-4).g_lr_at(10**9) == 2e-4
    cfg = FinetuneConfig(g_lr=2e-4, g_lr_end=5e-5, duration=60)
    assert cfg.g_lr_at(0) == pytest.approx(2e-4)
    assert cfg.g_lr_at(30_000) == pytest.approx(1.25e-4)  # half way: the mean of the two
    assert cfg.g_lr_at(15_000) == pytest.approx(5e-5 + 1.5e-4 * (1 + 0.5**0.5) / 2)
    assert cfg.g_lr_at(60_000) == pytest.approx(5e-5) and cfg.g_lr_at(90_000) == pytest.approx(5e-5)
    rates = [cfg.g_lr_at(n) for n in range(0, 60_001, 1000)]
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert FinetuneConfig.from_json(cfg.to_json()).g_lr_at(20_000) == cfg.g_lr_at(20_000)
