"""benchmarks.training: both modes run the real steps on the same network and report their ratio."""

from __future__ import annotations

import pytest
import torch

from benchmarks.training import main


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_finetune_reports_both_rates():
    res = main(["finetune", "--arch", "tiny", "--resolution", "16", "--batch", "4", "--steps", "1", "--rounds", "1"])
    assert res["pretrain_images_per_s"] > 0 and res["finetune_images_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["finetune_images_per_s"] / res["pretrain_images_per_s"], rel=0.01)


def test_loop_reports_the_loop_against_the_bare_step():
    res = main(["loop", "--data", "synthetic:16", "--arch", "tiny", "--batch", "4", "--steps", "2", "--rounds", "1"])
    assert res["bare_images_per_s"] > 0 and res["loop_images_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["loop_images_per_s"] / res["bare_images_per_s"])


def test_a_mode_is_required(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "loop,finetune" in capsys.readouterr().err
