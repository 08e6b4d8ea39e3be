import pytest
import torch

from tests.training.evaluation.helpers import make_models
from training.evaluation.samples import balanced_labels, generator_fn


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("eval"))


def test_sampling_is_seeded_and_batch_independent(models):
    from training.checkpoint import load_model

    model = load_model(models["teacher"])
    seeds = list(range(100, 106))
    labels = balanced_labels(6, 10)
    fn = generator_fn(model, "denoiser", 3, seeds, labels, "cpu")
    full = fn(0, 6)
    parts = torch.cat([fn(0, 2), fn(2, 6)])
    assert torch.allclose(full, parts, rtol=1e-4, atol=1e-3)
    assert torch.equal(fn(0, 6), full)
