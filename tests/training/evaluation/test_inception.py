import pytest
import torch
from safetensors.torch import save_file

from training.checkpoint import CheckpointError
from training.evaluation.inception import FEATURE_DIM, FIDInceptionV3, load_inception, load_inception_features


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return FIDInceptionV3().state_dict()


def test_layout_matches_the_published_fid_weights(state):
    # pytorch-fid's pt_inception-2015-12-05 file: torchvision Inception3 names, 1008 classes, no AuxLogits.
    assert state["fc.weight"].shape == (1008, FEATURE_DIM)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_6e.branch7x7dbl_5.bn.running_var"].shape == (192,)
    n = sum(
        v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert 23_000_000 < n < 24_500_000  # Inception-v3 without the auxiliary head: ~23.8M parameters


def test_loads_pth_and_safetensors_and_gives_2048_features(state, tmp_path):
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    a = load_inception(tmp_path / "w.pth")
    b = load_inception(tmp_path / "w.safetensors")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    fn = load_inception_features(tmp_path / "w.pth")
    feats, logits = fn(torch.zeros(1, 1, 28, 28))  # gray images are repeated to RGB and resized to 299
    assert feats.shape == (1, FEATURE_DIM) and logits is None


def test_clear_errors(tmp_path, state):
    with pytest.raises(CheckpointError, match="--inception .*not found"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_inception(bad)
    partial = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not FID Inception-v3 weights"):
        load_inception(tmp_path / "partial.pth")
