"""The training CLIs' shared argument handling: a resumed run keeps its saved options but an explicit --duration
(refused where it would change a schedule that spans the duration)."""

import json

import pytest

from training.cli import given_options, resolve_run_config
from training.distributed import World
from training.finetune import build_parser as finetune_parser
from training.pretrain import build_parser
from training.run_config import FinetuneConfig, PretrainConfig


def test_given_options_are_the_explicit_ones_whatever_the_default():
    parser = build_parser()
    assert given_options(parser, ["--duration", "2000", "--resume", "x"]) == {"duration", "resume"}
    assert given_options(parser, ["--duration=5"]) == {"duration"}
    assert given_options(parser, []) == set()


@pytest.mark.parametrize(("extra", "duration"), [([], 7), (["--duration", "9"], 9.0), (["--duration=2000"], 2000.0)])
def test_resume_keeps_the_saved_config_but_an_explicit_duration(tmp_path, extra, duration):
    (tmp_path / "config.json").write_text(json.dumps({"duration": 7, "batch": 8}))
    parser = build_parser()
    argv = ["--resume", str(tmp_path), *extra]
    cfg, run_dir = resolve_run_config(parser, parser.parse_args(argv), argv, World(), PretrainConfig)
    assert run_dir == tmp_path and (cfg.duration, cfg.batch) == (duration, 8)
    assert json.loads((tmp_path / "config.json").read_text()) == {"duration": duration, "batch": 8}  # recorded
    assert cfg.lr == PretrainConfig.lr  # an option the saved config lacks (an older run) takes its default


def test_a_new_run_gets_its_config_from_the_arguments():
    parser = build_parser()
    argv = ["--batch", "16", "--data", "synthetic:8"]
    cfg, run_dir = resolve_run_config(parser, parser.parse_args(argv), argv, World(), PretrainConfig)
    assert run_dir is None and cfg.batch == 16 and cfg.desc == "synthetic-fmnist"


def test_a_bad_option_value_is_a_usage_error(tmp_path, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        resolve_run_config(parser, parser.parse_args(["--batch", "0"]), ["--batch", "0"], World(), PretrainConfig)
    assert "field 'batch' must be >= 1" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"batch": "8"}))
    argv = ["--resume", str(tmp_path)]
    with pytest.raises(SystemExit):
        resolve_run_config(parser, parser.parse_args(argv), argv, World(), PretrainConfig)
    assert f"{tmp_path / 'config.json'}: field 'batch' must be of type int" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("saved", "extra", "resumed_as"),
    [
        ({"g_lr_end": 5e-5}, ["--duration", "120"], None),  # would move the cosine's end: refused
        ({"g_lr_end": 5e-5}, ["--duration", "60"], (60.0, None)),  # the same duration again changes nothing
        ({"g_lr_end": 5e-5}, ["--batch-gpu", "4"], (60.0, 4)),
        ({}, ["--duration", "120"], (120.0, None)),  # a constant learning rate: extending the run is fine
    ],
)
def test_resume_refuses_a_duration_that_would_change_the_cosine_g_lr(tmp_path, capsys, saved, extra, resumed_as):
    (tmp_path / "config.json").write_text(json.dumps({"duration": 60, "batch": 8, "teacher": "t", **saved}))
    parser = finetune_parser()
    argv = ["--resume", str(tmp_path), *extra]
    if resumed_as is None:
        with pytest.raises(SystemExit):
            resolve_run_config(parser, parser.parse_args(argv), argv, World(), FinetuneConfig)
        assert "would change G's cosine learning rate schedule" in capsys.readouterr().err
        assert json.loads((tmp_path / "config.json").read_text())["duration"] == 60  # nothing recorded
        return
    cfg, _ = resolve_run_config(parser, parser.parse_args(argv), argv, World(), FinetuneConfig)
    assert (cfg.duration, cfg.batch_gpu, cfg.g_lr_end) == (*resumed_as, saved.get("g_lr_end"))
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert (recorded["duration"], recorded.get("batch_gpu"), recorded["teacher"]) == (*resumed_as, "t")
