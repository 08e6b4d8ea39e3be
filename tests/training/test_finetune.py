"""D2O fine-tune: G moves, frozen tensors do not, R1 on its interval and scaled, exact resume, distill, DDP."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_classifier_dir
from training.checkpoint import load_model, load_state, read_model_config
from training.discriminator import feature_distance
from training.distributed import World, init_distributed, shutdown_distributed
from training.finetune import main, parse_args, run_config_from_args
from training.finetune_task import _average_grads, build_task
from training.freeze import frozen_names
from training.generation import load_for_generation
from training.pairs import make_pairs
from training.run_config import ConfigError, FinetuneConfig

BATCH = 4


def make_cfg(teacher_dir: Path, outdir: Path, *extra: str) -> FinetuneConfig:
    _, args = parse_args(
        [
            "--teacher", str(teacher_dir),
            "--data", "synthetic:32",
            "--batch", str(BATCH),
            "--grid-size", "4",
            "--disc-width", "16",
            "--outdir", str(outdir),
            *extra,
        ]
    )  # fmt: skip
    return run_config_from_args(args)


def short_run_args(teacher_dir: Path, steps: int, *extra: str) -> list[str]:
    """A ``training.finetune`` command line for a run of ``steps`` steps on synthetic data, R1 every 2nd step and
    a snapshot every step."""
    return [
        "--teacher", str(teacher_dir), "--data", "synthetic:32", "--batch", str(BATCH), "--grid-size", "4",
        "--disc-width", "16", "--r1-interval", "2", "--tick", "0.008", "--snap", "1",
        "--duration", str(steps * BATCH / 1000), "--threads", "1", *extra,
    ]  # fmt: skip


def run_steps(task, stream, steps: range) -> list[dict[str, float]]:
    out = []
    for step in steps:
        images, labels = next(stream)
        out.append(task.train_step(images, labels, step, step * BATCH))
    return out


@pytest.mark.parametrize(
    "disc, freeze", [("teacher", "d2o-f"), ("scratch", "none"), ("teacher", "d2o-f-decoder"), ("teacher", "d2o-f-plus")]
)
def test_steps_move_g_and_keep_frozen_tensors(tiny_denoiser_dir: Path, tmp_path: Path, disc: str, freeze: str):
    task, stream = build_task(make_cfg(tiny_denoiser_dir, tmp_path, "--disc", disc, "--freeze", freeze), World())
    teacher = load_model(tiny_denoiser_dir).state_dict()
    stats = run_steps(task, stream, range(3))
    assert {"loss_d", "loss_g", "loss_r1", "r1_penalty", "d_real", "d_fake"} <= set(stats[-1])
    g, ema = task.net.state_dict(), task.ema.net.state_dict()
    frozen = set(frozen_names(task.net, freeze)) if freeze != "none" else set(frozen_names(task.net, "d2o-f"))
    changed = {k for k in teacher if not torch.equal(teacher[k], g[k])}
    assert changed, "G did not move"
    if freeze != "none":
        assert task.freeze.fraction > 0.5  # D2O-F 0.79, decoder-only 0.66, plus 0.87 on the tiny net
        assert not changed & frozen  # frozen tensors bit-identical, in G and in its EMA
        assert all(torch.equal(teacher[k], ema[k]) for k in frozen)
        assert changed <= {n for n, p in task.net.named_parameters() if p.requires_grad}
        if freeze == "d2o-f-decoder":  # the encoder's block convs, which D2O-F freezes, train here
            assert changed & (set(frozen_names(task.net, "d2o-f")) - frozen)
    else:
        assert task.freeze.frozen_params == 0 and changed & frozen  # the block convs train too


def test_g_steps_follow_the_g_lr_schedule(tiny_denoiser_dir: Path, tmp_path: Path):
    """With --g-lr-end each G step runs at the cosine's rate for the images seen so far; D's rate stays put."""
    cfg = make_cfg(tiny_denoiser_dir, tmp_path, "--g-lr", "2e-4", "--g-lr-end", "2e-5", "--duration", "0.016")
    task, stream = build_task(cfg, World())
    for step, stats in enumerate(run_steps(task, stream, range(4))):
        assert stats["g_lr"] == pytest.approx(cfg.g_lr_at(step * BATCH))
    assert [g["lr"] for g in task.g_opt.param_groups] == [pytest.approx(cfg.g_lr_at(3 * BATCH))]
    assert 2e-5 < task.g_opt.param_groups[0]["lr"] < 1e-4 and task.d_opt.param_groups[0]["lr"] == cfg.d_lr
    constant = build_task(make_cfg(tiny_denoiser_dir, tmp_path, "--g-lr", "2e-4"), World())
    assert "g_lr" not in run_steps(*constant, range(1))[0] and constant[0].g_opt.param_groups[0]["lr"] == 2e-4


def test_mode_seeking_adds_its_term_and_leaves_the_gan_draws(tiny_denoiser_dir: Path, tmp_path: Path):
    """--mode-seeking W: G's loss gains W times MSGAN's term on a second noise of each sample's class; the D step
    (the same z, the same reals) is the plain run's to the bit, and the G step then differs."""
    plain, stream_a = build_task(make_cfg(tiny_denoiser_dir, tmp_path), World())
    seeking, stream_b = build_task(make_cfg(tiny_denoiser_dir, tmp_path, "--mode-seeking", "0.5"), World())
    assert plain.mode_seeking is None and seeking.mode_seeking is not None
    a, b = run_steps(plain, stream_a, range(1))[0], run_steps(seeking, stream_b, range(1))[0]
    assert "loss_ms" not in a and b["loss_ms"] > 0
    assert {k: b[k] for k in ("loss_d", "d_real", "d_fake", "loss_g")} == {
        k: a[k] for k in ("loss_d", "d_real", "d_fake", "loss_g")
    }
    ga, gb = plain.net.state_dict(), seeking.net.state_dict()
    assert any(not torch.equal(ga[k], gb[k]) for k in ga)  # the term moved G
    with pytest.raises(ConfigError, match="mode_seeking' must be >= 0"):
        make_cfg(tiny_denoiser_dir, tmp_path, "--mode-seeking", "-1")
    with pytest.raises(ConfigError, match="needs a GAN objective"):
        make_cfg(tiny_denoiser_dir, tmp_path, "--mode-seeking", "0.5").replace(objective="distill", pairs="p")


def test_r1_only_on_interval_and_scaled(tiny_denoiser_dir: Path, tmp_path: Path):
    gamma, interval = 0.5, 3
    cfg = make_cfg(tiny_denoiser_dir, tmp_path, "--r1-gamma", str(gamma), "--r1-interval", str(interval))
    task, stream = build_task(cfg, World())
    stats = run_steps(task, stream, range(interval))
    assert stats[0]["loss_r1"] > 0 and stats[1]["loss_r1"] == 0 and stats[2]["loss_r1"] == 0
    # Step 3 is due: recompute ||grad_x D(x)||^2 on the same reals with a copy of D taken just before the step.
    images, labels = next(stream)
    spy = copy.deepcopy(task.disc).train()
    real = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(spy(real, labels).sum(), real)
    expected = grad.square().sum(dim=(1, 2, 3)).mean().item()
    s = task.train_step(images, labels, interval, interval * BATCH)
    assert s["r1_penalty"] == pytest.approx(expected, rel=1e-5)
    assert s["loss_r1"] == pytest.approx(gamma / 2 * expected * interval, rel=1e-5)
    assert run_steps(task, stream, range(interval + 1, interval + 2))[0]["r1_penalty"] == s["r1_penalty"]


def _reference_step(task, images, labels, step: int, images_seen: int) -> dict[str, float]:
    """The fine-tune step as it was written before its losses moved into training.losses: the formulas inline."""
    cfg, device, per_rank = task.cfg, images.device, images.shape[0]
    y = labels if task.label_dim else None
    stats: dict[str, float] = {}
    task.g.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    z = torch.randn((task.batch_size, *task.img_shape), generator=gen)[task._rank_slice(per_rank)]
    fake = task.g(z.to(device), y)
    task._set_d_grad(True)
    task.d_opt.zero_grad(set_to_none=True)
    r1_step = cfg.r1_gamma > 0 and cfg.r1_interval > 0 and step % cfg.r1_interval == 0
    real = images.detach().requires_grad_(r1_step)
    both = task.disc(torch.cat([real, fake.detach()]), torch.cat([y, y]) if y is not None else None)
    logits_real, logits_fake = both[:per_rank], both[per_rank:]
    loss_d = F.softplus(-logits_real).mean(0).sum() + F.softplus(logits_fake).mean(0).sum()
    loss_r1 = torch.zeros((), device=device)
    if r1_step:
        (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3)).mean()
        loss_r1 = penalty * (cfg.r1_gamma / 2) * cfg.r1_interval
        task.last_r1 = penalty.item()
    (loss_d + loss_r1).backward()
    _average_grads(task.d_params, task.world)
    task.d_opt.step()
    task._set_d_grad(False)
    stats.update(loss_d=loss_d.item(), loss_r1=loss_r1.item(), r1_penalty=task.last_r1)
    task.g_opt.zero_grad(set_to_none=True)
    loss_gan = F.softplus(-task.disc(fake, y)).mean(0).sum()
    stats["loss_g"] = loss_gan.item()
    loss_g = torch.zeros((), device=device) + loss_gan
    if task.use_distill:
        zp, yp, target = task.pairs.get(task._pair_indices(step, per_rank))
        pred = task.g(zp, yp)
        dist = feature_distance(task.distill_loss.backbone, pred, target, yp)
        loss_distill = dist.mean()
        loss_g = loss_g + cfg.distill_weight * loss_distill
        stats["loss_distill"] = loss_distill.item()
    loss_g.backward()
    _average_grads(task.g_params, task.world)
    task.g_opt.step()
    task.ema.update(task.net, task.batch_size, images_seen + task.batch_size)
    return stats


@pytest.mark.parametrize("objective", ["gan", "gan+distill"])
def test_steps_equal_the_inline_formulas_they_replaced(tiny_denoiser_dir: Path, tmp_path: Path, objective: str):
    """Same seeds, same batches: D2OLoss/DistillLoss give the losses and updates of the old inline step, bit for bit."""
    extra = ["--r1-interval", "2", "--r1-gamma", "0.5", "--objective", objective]
    if objective != "gan":
        make_pairs(tiny_denoiser_dir, 6, tmp_path / "pairs", nfe=1, chunk=4, log=lambda msg: None)
        extra += ["--pairs", str(tmp_path / "pairs"), "--distill-loss", "feature", "--distill-weight", "0.5"]
    new, stream_a = build_task(make_cfg(tiny_denoiser_dir, tmp_path, *extra), World())
    old, stream_b = build_task(make_cfg(tiny_denoiser_dir, tmp_path, *extra), World())
    for step in range(3):  # R1 on steps 0 and 2
        images, labels = next(stream_a)
        images_b, labels_b = next(stream_b)
        assert torch.equal(images, images_b)
        got = new.train_step(images, labels, step, step * BATCH)
        want = _reference_step(old, images_b, labels_b, step, step * BATCH)
        assert {k: got[k] for k in want} == want, step
        assert (got["loss_r1"] > 0) == (step % 2 == 0)
    for a, b in [(new.net, old.net), (new.ema.net, old.ema.net), (new.disc, old.disc)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _state_tensors(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_state_tensors(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        return _state_tensors(dict(enumerate(obj)), prefix)
    return {prefix: obj}


@pytest.mark.parametrize("schedule", [[], ["--g-lr-end", "1e-5"]], ids=["constant-lr", "cosine-g-lr"])
def test_resume_is_bit_exact_and_exports_generators(tiny_denoiser_dir: Path, tmp_path: Path, schedule: list[str]):
    common = short_run_args(tiny_denoiser_dir, 6, "--dropout", "0.1", *schedule)
    full = main([*common, "--outdir", str(tmp_path / "a")])
    half = main([*common, "--outdir", str(tmp_path / "b"), "--max-steps", "3"])
    assert half["step"] == 3
    resumed = main(["--resume", half["run_dir"]])
    assert full["step"] == resumed["step"] == 6
    a = _state_tensors(load_state(Path(full["run_dir"]) / "training-state.pt"))
    b = _state_tensors(load_state(Path(resumed["run_dir"]) / "training-state.pt"))
    assert a.keys() == b.keys()
    assert any("._u" in k for k in a)  # spectral-norm vectors are saved
    for k in a:
        if k in ("progress.tick.", "progress.snapshot."):  # the stop at --max-steps adds a tick and a snapshot
            continue
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k

    run = Path(full["run_dir"])
    config = json.loads((run / "config.json").read_text())
    assert 0.5 < config["freeze_report"]["frozen_fraction"] < 1
    assert "parameters frozen" in (run / "log.txt").read_text()
    snap = sorted(run.glob("network-snapshot-*"))[-1]
    gen = load_model(snap)
    meta = read_model_config(snap).training
    assert meta["stage"] == "finetune" and meta["images_seen"] == 6 * BATCH and meta["freeze"] == "d2o-f"
    assert meta["objective"] == "gan" and meta["disc"] == "teacher" and meta["teacher"]["fingerprint"]
    assert gen(torch.zeros(2, 1, 16, 16), torch.tensor([0, 1])).shape == (2, 1, 16, 16)


def test_extra_ema_tracks_leave_training_alone_resume_and_load_as_run_dirs(tiny_denoiser_dir: Path, tmp_path: Path):
    """An --ema-extra track holds exactly the main EMA of a run configured with its half-life (the same steps),
    survives a resume bit for bit, and its dir reads as a run dir of its own."""
    common = short_run_args(tiny_denoiser_dir, 6)
    tracked = [*common, "--ema-halflife-kimg", "0.05", "--ema-rampup", "0.05", "--ema-extra", "0.01:0.5, 0.2"]
    full = main([*tracked, "--outdir", str(tmp_path / "a")])
    alone = main([*common, "--ema-halflife-kimg", "0.01", "--ema-rampup", "0.5", "--outdir", str(tmp_path / "b")])
    half = main([*tracked, "--outdir", str(tmp_path / "c"), "--max-steps", "3"])
    resumed = main(["--resume", half["run_dir"]])
    assert full["step"] == alone["step"] == resumed["step"] == 6

    run = Path(full["run_dir"])
    assert json.loads((run / "config.json").read_text())["ema_extra"] == ["0.01:0.5", "0.2"]
    state = load_state(run / "training-state.pt")["task"]
    other = load_state(Path(alone["run_dir"]) / "training-state.pt")["task"]
    assert sorted(state["ema_extra"]) == ["ema-0.01kimg-rampup0.5", "ema-0.2kimg-rampup0.05"]
    for k, v in other["g"].items():  # keeping more averages does not change a step
        assert torch.equal(state["g"][k], v), k
    for k, v in other["ema"].items():
        assert torch.equal(state["ema_extra"]["ema-0.01kimg-rampup0.5"][k], v), k
    assert any(not torch.equal(state["ema"][k], v) for k, v in other["ema"].items())  # a different average

    again = _state_tensors(load_state(Path(resumed["run_dir"]) / "training-state.pt")["task"]["ema_extra"])
    for k, v in _state_tensors(state["ema_extra"]).items():
        assert torch.equal(again[k], v), k

    track_dir = run / "ema-0.01kimg-rampup0.5"
    model, config, model_dir = load_for_generation(track_dir)
    assert model_dir.parent == track_dir and model_dir.name.startswith("network-snapshot-")
    assert config.training["ema"] == {"halflife_kimg": 0.01, "rampup": 0.5}
    assert read_model_config(sorted(run.glob("network-snapshot-*"))[-1]).training["ema"]["halflife_kimg"] == 0.05
    main_snapshot_state = other["ema"]
    for k, v in model.denoiser.state_dict().items():
        assert torch.equal(v, main_snapshot_state[k]), k


def test_bad_extra_ema_tracks_are_refused(tiny_denoiser_dir: Path, tmp_path: Path):
    for bad, reason in [("x", "numbers"), ("0", "positive"), ("5:-1", "positive"), ("1,1.0", "repeats")]:
        with pytest.raises(ValueError, match=reason):
            make_cfg(tiny_denoiser_dir, tmp_path, "--ema-halflife-kimg", "3", "--ema-extra", bad)
    with pytest.raises(ValueError, match="repeats"):  # the run's own EMA (its ramp-up is the default)
        make_cfg(tiny_denoiser_dir, tmp_path, "--ema-halflife-kimg", "3", "--ema-extra", "3")
    assert make_cfg(tiny_denoiser_dir, tmp_path, "--ema-halflife-kimg", "3", "--ema-extra", "3:0.3").ema_extra


def test_minibatch_stddev_disc_trains_records_and_resumes(tiny_denoiser_dir: Path, tmp_path: Path):
    half = main(
        short_run_args(tiny_denoiser_dir, 4, "--disc-mbstd", "2", "--outdir", str(tmp_path), "--max-steps", "2")
    )
    run = Path(half["run_dir"])
    assert json.loads((run / "config.json").read_text())["disc_mbstd"] == 2
    resumed = main(["--resume", str(run)])  # D's heads are rebuilt with the extra channel, or its state won't load
    assert resumed["step"] == 4
    state = load_state(run / "training-state.pt")
    assert state["task"]["d"]["heads.0.conv1.parametrizations.weight.original"].shape[1] == 16 + 1
    cfg = make_cfg(tiny_denoiser_dir, tmp_path / "plain")
    assert cfg.disc_mbstd == 0  # off unless asked for; a run dir from before the option resumes with it off


def test_disc_without_class_projection_trains_records_and_resumes(tiny_denoiser_dir: Path, tmp_path: Path):
    args = short_run_args(
        tiny_denoiser_dir, 4, "--disc-cond", "backbone", "--outdir", str(tmp_path), "--max-steps", "2"
    )
    run = Path(main(args)["run_dir"])
    assert json.loads((run / "config.json").read_text())["disc_cond"] == "backbone"
    assert main(["--resume", str(run)])["step"] == 4  # D is rebuilt without the heads' embeddings, or won't load
    assert not any("embed" in k for k in load_state(run / "training-state.pt")["task"]["d"])
    assert make_cfg(tiny_denoiser_dir, tmp_path / "plain").disc_cond == "projection"  # the default, and older runs'
    with pytest.raises(ValueError, match="disc_cond"):
        FinetuneConfig.from_options({"disc_cond": "none"})


def test_classifier_backbone_disc_trains_records_and_resumes(tiny_denoiser_dir: Path, tmp_path: Path):
    cls_dir, _ = make_classifier_dir(tmp_path / "disc-classifier")
    backbone = ["--disc-backbone", str(cls_dir / "classifier.safetensors"), "--disc-backbone-config"]
    args = short_run_args(tiny_denoiser_dir, 4, *backbone, str(cls_dir / "config.json"))
    run = Path(main([*args, "--outdir", str(tmp_path / "runs"), "--max-steps", "2"])["run_dir"])
    assert json.loads((run / "config.json").read_text())["disc"] == "backbone"
    d_state = load_state(run / "training-state.pt")["task"]["d"]
    assert d_state and not any(k.startswith("backbone.") for k in d_state)  # only the heads are D's state
    assert main(["--resume", str(run)])["step"] == 4


def test_distill_objectives_read_pairs(tiny_denoiser_dir: Path, tmp_path: Path):
    pairs = tmp_path / "pairs"
    make_pairs(tiny_denoiser_dir, 6, pairs, nfe=1, chunk=4, log=lambda msg: None)
    teacher = load_model(tiny_denoiser_dir).state_dict()
    for objective, loss in [("distill", "l2"), ("gan+distill", "feature")]:
        cfg = make_cfg(
            tiny_denoiser_dir, tmp_path, "--objective", objective, "--pairs", str(pairs), "--distill-loss", loss
        )
        task, stream = build_task(cfg, World())
        assert (task.disc is None) == (objective == "distill")
        first_epoch = torch.cat([task._pair_indices(0, BATCH), task._pair_indices(1, BATCH)])[:6]
        assert sorted(first_epoch.tolist()) == list(range(6))  # each pair once per epoch
        stats = run_steps(task, stream, range(2))
        assert stats[-1]["loss_distill"] > 0 and ("loss_d" in stats[-1]) == (objective != "distill")
        assert any(not torch.equal(teacher[k], v) for k, v in task.net.state_dict().items())
    with pytest.raises(SystemExit):
        parse_args(["--teacher", str(tiny_denoiser_dir), "--objective", "distill"])  # no --pairs


def test_cli_checks_and_backbone_files_select_the_backbone_disc():
    _, args = parse_args(["--teacher", "t", "--disc-backbone", "w.safetensors", "--disc-backbone-config", "c.json"])
    assert args.disc == "backbone"
    for explicit in (["--disc", "teacher"], ["--disc=teacher"]):  # an explicit --disc wins over the files
        backbone = ["--disc-backbone", "w.safetensors", "--disc-backbone-config", "c.json"]
        assert parse_args(["--teacher", "t", *backbone, *explicit])[1].disc == "teacher"
    for bad in (["--data", "x"], ["--teacher", "t", "--disc", "backbone"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, teacher_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    world = init_distributed("cpu")
    try:
        task, stream = build_task(make_cfg(Path(teacher_dir), Path(out), "--r1-interval", "2"), world)
        stats = run_steps(task, stream, range(3))
        torch.save(
            dict(g=task.net.state_dict(), d=task.disc.trainable_state_dict(), stats=stats), Path(out) / f"{rank}.pt"
        )
    finally:
        shutdown_distributed()


@pytest.mark.slow
def test_ddp_two_gloo_ranks_stay_equal(tiny_denoiser_dir: Path, tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, str(tiny_denoiser_dir), str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("g", "d"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    # Each rank takes its half of the global batch and of the global noise: their mean is the single-process step.
    task, stream = build_task(make_cfg(tiny_denoiser_dir, tmp_path, "--r1-interval", "2"), World())
    single = run_steps(task, stream, range(1))[0]
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert (r0["stats"][0][key] + r1["stats"][0][key]) / 2 == pytest.approx(single[key], rel=1e-5, abs=1e-6)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these nets are tiny, and two spinning OpenMP threads on a busy CI box cost far more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_augment_transforms_what_d_sees_and_ranks_slice_the_global_draw(tiny_denoiser_dir: Path, tmp_path: Path):
    plain, _ = build_task(make_cfg(tiny_denoiser_dir, tmp_path / "a"), World())
    assert plain._augment(0, BATCH, reals_and_fakes=True) is None
    task, stream = build_task(make_cfg(tiny_denoiser_dir, tmp_path / "b", "--augment", "translation,cutout"), World())
    assert task.cfg.augment == "translation,cutout"
    x = torch.randn(2 * BATCH, *task.img_shape)
    whole = task._augment(5, BATCH, reals_and_fakes=True)(x)
    assert not torch.equal(whole, x)
    assert torch.equal(task._augment(5, BATCH, reals_and_fakes=True)(x), whole)  # seeded by (seed, step)
    # Two ranks of a 2-process step: each transforms its reals and fakes as the single process did.
    half = BATCH // 2
    for rank in (0, 1):
        task.world = World(rank=rank, world_size=2)
        rows = torch.cat([torch.arange(half) + rank * half, torch.arange(half) + BATCH + rank * half])
        mine, expected = x[rows], whole[rows]
        assert torch.equal(task._augment(5, half, reals_and_fakes=True)(mine), expected)
    task.world = World()
    stats = run_steps(task, stream, range(2))
    assert all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in stats)


def test_bad_augment_policy_is_refused(tiny_denoiser_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="augment"):
        make_cfg(tiny_denoiser_dir, tmp_path, "--augment", "flip")
