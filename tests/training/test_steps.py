"""Precision and accumulation (training.steps): an accumulated step equals the whole-batch step, for pre-training
and fine-tuning; bf16 and fp16 autocast run on CPU too, and the run dir records the precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training import finetune, pretrain
from training.distributed import World
from training.finetune import parse_args
from training.finetune import run_config_from_args as finetune_config
from training.finetune_task import build_task as build_finetune
from training.pretrain import build_parser
from training.pretrain import run_config_from_args as pretrain_config
from training.pretrain_task import build_task as build_pretrain
from training.steps import accumulation_rounds, resolve_precision

PRETRAIN = ["--data", "synthetic:64", "--arch", "tiny", "--batch", "8", "--lr-rampup-kimg", "0", "--grid-size", "4"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rounds_split_a_ranks_batch() -> None:
    assert accumulation_rounds(8, None) == [slice(0, 8)]
    assert accumulation_rounds(8, 2) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert accumulation_rounds(8, 64) == [slice(0, 8)]  # more than the rank has: one round
    with pytest.raises(ValueError, match="does not divide"):
        accumulation_rounds(8, 3)


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError):
        resolve_precision("tf32", cpu)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            err = (a[k] - b[k]).abs().max().item() if a[k].numel() else 0.0
            assert err <= atol, f"{what}: {k} differs by {err:.3g}"
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k}"


def test_accumulated_pretrain_step_equals_the_whole_batch(tmp_path: Path) -> None:
    tasks = []
    for extra in ([], ["--batch-gpu", "2"]):
        cfg = pretrain_config(build_parser().parse_args([*PRETRAIN, "--outdir", str(tmp_path), *extra]))
        tasks.append(build_pretrain(cfg, World()))
    (whole, stream_a), (rounds, stream_b) = tasks
    assert rounds.cfg.batch_gpu == 2 and whole.cfg.batch_gpu is None
    for step in range(2):
        images, labels = next(stream_a)
        assert torch.equal(images, next(stream_b)[0])
        a = whole.train_step(images, labels, step, step * 8)
        b = rounds.train_step(images, labels, step, step * 8)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"])
    # Adam divides by sqrt(v): a gradient of ~1e-8 (eps) moves a weight by up to lr; rounding sets the tolerance.
    assert_close(whole.net.state_dict(), rounds.net.state_dict(), "net", atol=1e-5)
    assert_close(whole.ema.net.state_dict(), rounds.ema.net.state_dict(), "ema", atol=1e-5)


def finetune_cfg(teacher: Path, outdir: Path, *extra: str):
    _, args = parse_args(
        [
            "--teacher", str(teacher), "--data", "synthetic:32", "--batch", "4", "--grid-size", "4",
            "--disc-width", "16", "--outdir", str(outdir), *extra,
        ]
    )  # fmt: skip
    return finetune_config(args)


@pytest.mark.parametrize(
    "disc, more",
    [("teacher", []), ("scratch", []), ("teacher", ["--mode-seeking", "0.5"])],
    ids=["teacher", "scratch", "mode-seeking"],
)
def test_accumulated_finetune_step_equals_the_whole_batch(
    tiny_denoiser_dir: Path, tmp_path: Path, disc: str, more: list[str]
) -> None:
    """D and G steps in rounds of 2 (R1 on step 0, DiffAugment sliced per round, spectral norm iterated once per
    step, the mode-seeking term's second noises sliced per round) against the 4-image step."""
    extra = ["--r1-interval", "2", "--r1-gamma", "0.5", "--augment", "translation,cutout", "--disc", disc, *more]
    whole, stream_a = build_finetune(finetune_cfg(tiny_denoiser_dir, tmp_path, *extra), World())
    rounds, stream_b = build_finetune(finetune_cfg(tiny_denoiser_dir, tmp_path, *extra, "--batch-gpu", "2"), World())
    for step in range(3):
        images, labels = next(stream_a)
        assert torch.equal(images, next(stream_b)[0])
        a = whole.train_step(images, labels, step, step * 4)
        b = rounds.train_step(images, labels, step, step * 4)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (step, k)
        assert (a["loss_r1"] > 0) == (step % 2 == 0)
    assert_close(whole.net.state_dict(), rounds.net.state_dict(), "G", atol=1e-5)
    assert_close(whole.ema.net.state_dict(), rounds.ema.net.state_dict(), "EMA", atol=1e-5)
    assert_close(whole.disc.trainable_state_dict(), rounds.disc.trainable_state_dict(), "D", atol=1e-5)


def test_bf16_autocast_runs_on_cpu_and_the_run_records_it(tiny_denoiser_dir: Path, tmp_path: Path) -> None:
    out = pretrain.main([*PRETRAIN, "--outdir", str(tmp_path / "pre"), "--precision", "bf16", "--max-steps", "2"])
    config = json.loads((Path(out["run_dir"]) / "config.json").read_text())
    assert config["precision"] == "bf16" and config["batch_gpu"] is None
    stats = json.loads((Path(out["run_dir"]) / "stats.jsonl").read_text().splitlines()[-1])
    assert stats["loss"] == stats["loss"] and stats["loss"] > 0  # finite
    resumed = pretrain.main(["--resume", out["run_dir"], "--max-steps", "1", "--batch-gpu", "4"])
    assert resumed["step"] == 3
    # auto resolves to fp32 on a CPU, and the run records that rather than auto.
    auto = pretrain.main([*PRETRAIN, "--outdir", str(tmp_path / "auto"), "--max-steps", "1"])
    assert json.loads((Path(auto["run_dir"]) / "config.json").read_text())["precision"] == "fp32"

    ft = finetune.main(
        [
            "--teacher", str(tiny_denoiser_dir), "--data", "synthetic:32", "--batch", "4", "--grid-size", "4",
            "--disc-width", "16", "--outdir", str(tmp_path / "ft"), "--precision", "bf16", "--batch-gpu", "2",
            "--max-steps", "2",
        ]
    )  # fmt: skip
    config = json.loads((Path(ft["run_dir"]) / "config.json").read_text())
    assert config["precision"] == "bf16" and config["batch_gpu"] == 2
    stats = json.loads((Path(ft["run_dir"]) / "stats.jsonl").read_text().splitlines()[-1])
    assert all(v == v for v in stats.values() if isinstance(v, float))  # no NaN


def test_fp16_scales_the_loss_and_saves_the_scaler(tiny_denoiser_dir: Path, tmp_path: Path) -> None:
    cfg = pretrain_config(build_parser().parse_args([*PRETRAIN, "--outdir", str(tmp_path), "--precision", "fp16"]))
    task, stream = build_pretrain(cfg, World())
    assert task.scaler.is_enabled()
    for step in range(2):
        images, labels = next(stream)
        stats = task.train_step(images, labels, step, step * 8)
    assert stats["loss"] == stats["loss"] and "scaler" in task.state_dict()
    ft, ft_stream = build_finetune(finetune_cfg(tiny_denoiser_dir, tmp_path, "--precision", "fp16"), World())
    images, labels = next(ft_stream)
    stats = ft.train_step(images, labels, 0, 0)
    assert all(v == v for v in stats.values()) and "scaler" in ft.state_dict()
