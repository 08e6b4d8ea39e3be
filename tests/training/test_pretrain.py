"""Pre-training end to end on a tiny net and synthetic data: run dirs, loss, resume, DDP."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training import pretrain
from training.checkpoint import load_model, load_state
from training.rundir import STATE_NAME, export_state_snapshot

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "--data",
    "synthetic:64",
    "--arch",
    "tiny",
    "--batch",
    "8",
    "--grid-size",
    "4",
    "--grid-nfe",
    "1",
    "--tick",
    "0.016",
    "--snap",
    "100",
    "--lr-rampup-kimg",
    "0",
    "--threads",
    "1",
]


def run(tmp_path: Path, *extra: str) -> dict:
    return pretrain.main([*BASE, "--outdir", str(tmp_path), *extra])


def net_state(run_dir: str) -> dict[str, torch.Tensor]:
    return load_state(Path(run_dir) / STATE_NAME)["task"]["net"]


def test_run_dir_has_config_stats_grid_and_snapshot(tmp_path):
    result = run(tmp_path, "--max-steps", "4")
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "00000-synthetic-tiny"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "tiny" and config["batch"] == 8
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert stats and {"kimg", "loss", "images_per_s", "sec_per_kimg", "peak_mem_mb"} <= set(stats[-1])
    assert stats[-1]["kimg"] == pytest.approx(0.032)
    assert list(run_dir.glob("samples-*.png"))
    model = load_model(next(run_dir.glob("network-snapshot-*")))
    assert model.label_dim == 10
    assert (run_dir / "log.txt").read_text().count("tick") >= 1
    assert Path(run(tmp_path, "--max-steps", "1")["run_dir"]).name == "00001-synthetic-tiny"


def test_loss_falls_on_synthetic_data(tmp_path):
    result = run(
        tmp_path, "--max-steps", "60", "--lr", "2e-3", "--tick", "0.08", "--batch", "16", "--data", "synthetic:256"
    )
    stats = [json.loads(line) for line in (Path(result["run_dir"]) / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["loss"] < 0.7 * stats[0]["loss"], stats


def test_resume_is_bit_exact(tmp_path):
    straight = run(tmp_path / "a", "--max-steps", "6")
    half = run(tmp_path / "b", "--max-steps", "3")
    resumed = pretrain.main(["--resume", half["run_dir"], "--max-steps", "3", "--threads", "1"])
    assert resumed["step"] == straight["step"] == 6
    a, b = net_state(straight["run_dir"]), net_state(resumed["run_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_state(Path(straight["run_dir"]) / STATE_NAME)["task"]["ema"]
    ema_b = load_state(Path(resumed["run_dir"]) / STATE_NAME)["task"]["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resume_after_a_hard_kill_records_each_step_once(tmp_path):
    half = run(tmp_path, "--max-steps", "3", "--tick", "0.008")
    stats_path = Path(half["run_dir"]) / "stats.jsonl"
    saved = [json.loads(line) for line in stats_path.read_text().splitlines()]
    # What a run killed after its last state writes: ticks of steps the state does not hold.
    with open(stats_path, "a") as f:
        f.write(json.dumps({**saved[-1], "tick": saved[-1]["tick"] + 1, "step": 4, "kimg": 0.032}) + "\n")
        f.write('{"tick": 9, "st')  # and a record torn by the kill
    pretrain.main(["--resume", half["run_dir"], "--max-steps", "3", "--threads", "1"])
    steps = [json.loads(line)["step"] for line in stats_path.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6, steps


def test_ctrl_c_writes_a_snapshot(tmp_path):
    cmd = [sys.executable, "-m", "training.pretrain", *BASE, "--outdir", str(tmp_path), "--duration", "100"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("tick"):
                break
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    run_dir = tmp_path / "00000-synthetic-tiny"
    assert (run_dir / STATE_NAME).is_file()
    assert "Stopped on request" in (run_dir / "log.txt").read_text()


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from training import pretrain
    from training.distributed import World
    captured = {}
    original = pretrain.run_training
    def capture(task, *args, **kwargs):
        out = original(task, *args, **kwargs)
        captured['net'] = {k: v.clone() for k, v in task.net.state_dict().items()}
        return out
    pretrain.run_training = capture
    orig_shutdown = pretrain.shutdown_distributed
    def save_then_shutdown():
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(captured['net'], sys.argv[1] + f'/rank{rank}.pt')
        orig_shutdown()
    pretrain.shutdown_distributed = save_then_shutdown
    pretrain.main(sys.argv[2:])
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_match_the_global_batch(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    args = [*BASE, "--max-steps", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(script),
            str(ddp_dir),
            *args,
            "--batch-gpu",  # each rank's 4 images in 2 rounds (DDP syncs the last only): still the global step
            "2",
            "--outdir",
            str(ddp_dir / "runs"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, str(script), str(single_dir), *args, "--outdir", str(single_dir / "runs")],
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    r0, r1 = torch.load(ddp_dir / "rank0.pt"), torch.load(ddp_dir / "rank1.pt")
    single = torch.load(single_dir / "rank0.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ at {k}"
        assert torch.allclose(r0[k], single[k], atol=1e-5, rtol=1e-4), f"DDP differs from single process at {k}"
    stats = (ddp_dir / "runs" / "00000-synthetic-tiny" / "stats.jsonl").read_text().splitlines()
    assert json.loads(stats[-1])["kimg"] == pytest.approx(0.024)  # 3 steps x global batch 8


def test_state_only_run_dir_exports_its_ema_for_teacher_and_evaluate(tmp_path):
    """A fresh clone carries a teacher's training-state.pt and config.json only (runs/README.md)."""
    import shutil

    from training.evaluation.sources import resolve_source
    from training.teacher import load_teacher

    run_dir = Path(run(tmp_path, "--max-steps", "4")["run_dir"])
    for snap in run_dir.glob("network-snapshot-*"):
        shutil.rmtree(snap)
    state = load_state(run_dir / STATE_NAME)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    exported = export_state_snapshot(run_dir)
    assert torch.equal(torch.get_rng_state(), rng)  # building the network does not reseed the caller
    assert exported == run_dir / "network-snapshot-000000"
    assert export_state_snapshot(run_dir) == exported  # a second export (another rank) is harmless
    assert not list(run_dir.glob(".network-snapshot-*"))  # no temporary dir left behind
    shutil.rmtree(exported)
    teacher = load_teacher(run_dir)
    assert teacher.info["snapshot"] == "network-snapshot-000000"
    assert teacher.info["images_seen"] == state["progress"]["images_seen"] == 32
    for name, value in teacher.net.state_dict().items():
        assert torch.equal(value, state["task"]["ema"][name]), name
    shutil.rmtree(run_dir / "network-snapshot-000000")
    source = resolve_source(f"teacher={run_dir}")
    assert source.kind == "denoiser" and source.model_dir.name == "network-snapshot-000000"
    assert export_state_snapshot(tmp_path) is None  # not a run dir
