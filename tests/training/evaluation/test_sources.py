import pytest

from tests.training.evaluation.helpers import denoiser, make_models
from training.checkpoint import CheckpointError, save_model
from training.evaluation.sources import resolve_source, snapshot_dirs
from training.precond import D2OPrecond, OneStepGenerator


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("eval"))


def test_snapshot_reader_and_source_resolution(models, tmp_path):
    snaps = snapshot_dirs(models["run"])
    assert [s[0] for s in snaps] == [48, 2048]
    src = resolve_source(f"d2o-f={models['run']}")
    assert src.label == "d2o-f" and src.kind == "generator" and src.run_dir == models["run"]
    assert src.model_dir.name == "network-snapshot-000002" and src.images_seen == 2048
    assert resolve_source(str(models["teacher"])).kind == "denoiser"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    # Without training.images_seen in its config, a snapshot's kimg comes from its name.
    bare = tmp_path / "run"
    save_model(OneStepGenerator(denoiser(D2OPrecond)), bare / "network-snapshot-000005")
    assert snapshot_dirs(bare)[0][0] == 5000
