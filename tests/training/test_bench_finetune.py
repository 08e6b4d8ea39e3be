"""bench_finetune runs both real train steps on the same network and reports their ratio."""

from __future__ import annotations

import pytest
import torch

from training.bench_finetune import main


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bench_reports_both_rates():
    res = main(["--arch", "tiny", "--resolution", "16", "--batch", "4", "--steps", "1", "--rounds", "1"])
    assert res["pretrain_images_per_s"] > 0 and res["finetune_images_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["finetune_images_per_s"] / res["pretrain_images_per_s"], rel=0.01)
