"""docs/your-data.md, run end to end on a tiny synthetic folder: a folder of images -> pre-training -> D2O-F
fine-tune -> evaluation -> ONNX export -> ``python -m service`` on 127.0.0.1 -> an image for a seed.

Every step is the ``python -m`` command the walkthrough shows, run in a subprocess from a scratch directory, with
sizes cut down (``--arch tiny``, 16x16 images, a few optimizer steps) so that the chain takes minutes on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow
STEP_SECONDS: dict[str, float] = {}  # printed at the end (shown by pytest -s, or on a failure)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your-data.md"


def make_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of 20x20 RGB drawings, one subfolder each (the layout the walkthrough starts from)."""
    rng = np.random.default_rng(0)
    for name in ("circles", "squares"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (20, 20), tuple(int(c) for c in rng.integers(0, 80, 3)))
            x, y, r = (int(v) for v in rng.integers(4, 16, 3))
            box = (x - r // 2, y - r // 2, x + r // 2, y + r // 2)
            fill = tuple(int(c) for c in rng.integers(120, 256, 3))
            (ImageDraw.Draw(img).ellipse if name == "circles" else ImageDraw.Draw(img).rectangle)(box, fill=fill)
            img.save(root / name / f"{i:03d}.png")
    return root


def run(cwd: Path, module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    STEP_SECONDS[f"{module} {args[0]}"] = round(time.monotonic() - t0, 1)
    print(f"python -m {module} {' '.join(args)}: {STEP_SECONDS[f'{module} {args[0]}']} s", flush=True)
    assert out.returncode == 0, f"python -m {module} {' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_walkthrough_commands_exist():
    text = DOC.read_text()
    for command in ("training.pretrain", "training.finetune", "training.generate", "training.evaluate score",
                    "training.evaluate report", "exporters onnx", "python -m service", "/v1/generate"):  # fmt: skip
        assert command in text, command


@pytest.mark.timeout(1800)  # a few minutes on an idle machine; far more where other jobs share the cores
def test_your_data_end_to_end(tmp_path: Path):
    make_folder(tmp_path / "my-images")
    small = ["--device", "cpu", "--threads", "1", "--batch", "8", "--tick", "0.008", "--snap", "1", "--grid-size", "8"]

    # 1. Pre-train a teacher on the folder (class subfolders become labels; images resized to 16x16).
    run(tmp_path, "training.pretrain", "--data", "my-images", "--resolution", "16", "--arch", "tiny",
        "--duration", "0.032", "--grid-nfe", "3", "--desc", "teacher", *small)  # fmt: skip
    teacher = tmp_path / "runs" / "00000-teacher"
    assert (teacher / "training-state.pt").is_file() and list(teacher.glob("network-snapshot-*"))

    # 2. D2O-F: a GAN-only fine-tune of the teacher into a one-step generator.
    run(tmp_path, "training.finetune", "--teacher", "runs/00000-teacher", "--data", "my-images",
        "--freeze", "d2o-f", "--duration", "0.032", "--desc", "d2o-f", *small)  # fmt: skip
    finetune = tmp_path / "runs" / "00001-d2o-f"
    snapshots = sorted(finetune.glob("network-snapshot-*"))
    assert snapshots and json.loads((snapshots[-1] / "config.json").read_text())["kind"] == "generator"

    # 3. Evaluate: images from the one-step model and the teacher, scored against the folder in the
    #    teacher's feature space (the bundled classifier knows only Fashion-MNIST), then the full report.
    run(tmp_path, "training.generate", "runs/00001-d2o-f", "--seeds", "0-23", "--npz", "one-step.npz",
        "--grid", "one-step.png", "--no-progress")  # fmt: skip
    score = ["--ref", "my-images", "--teacher", "runs/00000-teacher", "--kid-subsets", "5", "--kid-subset-size", "12"]
    run(tmp_path, "training.evaluate", "score", "--images", "one-step.npz", *score, "--out", "scores.json")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["metric_name"] == "FD-teacher" and scores["count"] == 24 and np.isfinite(scores["fd"])
    assert scores["features"]["kind"] == "teacher" and "fmnist" in scores["features"]["reason"]
    run(tmp_path, "training.evaluate", "report", "--model", "runs/00000-teacher", "--model", "runs/00001-d2o-f",
        "--data", "my-images", "--out", "eval", "--num-samples", "16", "--nfe", "1,3", "--kid-subsets", "5",
        "--kid-subset-size", "8", "--device", "cpu")  # fmt: skip
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "FD-teacher" in report and "00001-d2o-f" in report

    # 4. Export: the latest snapshot becomes a model dir under models/, with its ONNX graph.
    models = tmp_path / "models"
    shutil.copytree(snapshots[-1], models / "my-d2o")
    run(tmp_path, "exporters", "onnx", "models/my-d2o", "--parity-batches", "1,3")
    assert (models / "my-d2o" / "model.onnx").is_file()

    # 5. Serve it on 127.0.0.1 and ask for seed 5; the same pixels come from training.generate.
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "service", "--models-dir", "models", "--default-model", "my-d2o", "--backend",
           "onnxruntime", "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", "4"]  # fmt: skip
    log = (tmp_path / "service.log").open("w")
    t0 = time.monotonic()
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                assert server.poll() is None, (tmp_path / "service.log").read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "not ready:\n" + (tmp_path / "service.log").read_text()
                time.sleep(0.5)
            print(f"python -m service: ready after {time.monotonic() - t0:.1f} s", flush=True)
            r = client.post("/v1/generate", json={"seed": 5}, headers={"Accept": "image/png"})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "5"
            served = np.asarray(Image.open(io.BytesIO(r.content)))
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    assert served.shape == (16, 16, 3) and served.dtype == np.uint8
    run(tmp_path, "training.generate", "models/my-d2o", "--seeds", "5", "--npz", "seed5.npz", "--no-progress")
    with np.load(tmp_path / "seed5.npz") as f:
        local, label = f["images"][0], int(f["labels"][0])
    assert int(r.headers["x-class-label"]) == label
    assert np.abs(served.astype(int) - local.astype(int)).max() <= 1  # ONNX Runtime vs PyTorch: within a level
