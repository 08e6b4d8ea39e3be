"""Teachers' sample sets on disk: made once, reused with the same figures, never reused for another set."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from tests.training.evaluation.helpers import make_models
from training.evaluate import main
from training.evaluation import pipeline
from training.evaluation.sample_cache import CachedSet, model_fingerprint, prune, set_key

FAST = ["--kid-subsets", "3", "--kid-subset-size", "8", "--batch", "8", "--device", "cpu", "--bootstrap", "0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("cache"))


def report(models, out, cache, *args: str) -> dict:
    argv = ["--classifier", str(models["classifier"]), "--out", str(out), "--sample-cache", str(cache), *FAST]
    assert main([*argv, "--model", f"teacher={models['teacher']}", "--num-samples", "12", *args]) == 0
    return json.loads((out / "metrics.json").read_text())


def count_denoiser_sets(monkeypatch) -> list[int]:
    made: list[int] = []
    original = pipeline.generator_fn

    def counting(model, kind, nfe, seeds, labels, device):
        if kind == "denoiser":
            made.append(nfe)
        return original(model, kind, nfe, seeds, labels, device)

    monkeypatch.setattr(pipeline, "generator_fn", counting)
    return made


def teacher_rows(m: dict) -> dict[int, dict]:
    return {r["nfe"]: r for r in m["results"] if r["label"] == "teacher"}


def test_a_teacher_set_is_made_once_and_gives_the_same_figures(models, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = report(models, tmp_path / "a", cache, "--nfe", "1,3")
    stored = sorted(p.suffix for p in cache.iterdir())
    assert stored == [".json", ".json", ".npy", ".npy"]
    meta = [json.loads(p.read_text()) for p in cache.glob("*.json")]
    assert sorted(x["key"]["nfe"] for x in meta) == [1, 3] and all(x["shape"] == [12, 1, 16, 16] for x in meta)

    made = count_denoiser_sets(monkeypatch)
    second = report(models, tmp_path / "b", cache, "--nfe", "1,3")
    assert made == [1, 3]  # the sampler is set up, but its images come from the cache
    for nfe, row in teacher_rows(first).items():
        again = teacher_rows(second)[nfe]
        for key in ("fd", "kid", "precision", "recall", "class_accuracy"):
            assert again[key] == row[key], (nfe, key)
    # The images/s column of a cached set keeps the time its generation took (from the sidecar), not ~0.
    assert sorted(r["seconds"] for r in teacher_rows(second).values()) == sorted(x["seconds"] for x in meta)


def test_cached_images_are_never_generated(models, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    report(models, tmp_path / "a", cache, "--nfe", "3")
    original = pipeline.generator_fn

    def refusing(model, kind, nfe, seeds, labels, device):
        fn = original(model, kind, nfe, seeds, labels, device)
        if kind != "denoiser":
            return fn

        def generate(start: int, stop: int) -> torch.Tensor:
            raise AssertionError("a cached teacher set was generated again")

        return generate

    monkeypatch.setattr(pipeline, "generator_fn", refusing)
    report(models, tmp_path / "b", cache, "--nfe", "3")


def test_another_set_is_not_served_from_the_cache(models, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    report(models, tmp_path / "a", cache, "--nfe", "3")
    made = count_denoiser_sets(monkeypatch)
    original_calls: list[tuple[int, int]] = []
    for args in (["--nfe", "1"], ["--nfe", "3", "--seeds", "validation"], ["--nfe", "3", "--num-samples", "10"]):
        report(models, tmp_path / "x", cache, *args)
        original_calls.append((len(made), len(list(cache.glob("*.npy")))))
    assert original_calls == [(1, 2), (2, 3), (3, 4)]
    # Other weights under the same dir name: a new key.
    other = tmp_path / "teacher"
    shutil.copytree(models["teacher"], other)
    weights = next(other.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    key = set_key(other, 3, range(200_000, 200_012), torch.arange(12) % 10, "cpu")
    assert key != set_key(models["teacher"], 3, range(200_000, 200_012), torch.arange(12) % 10, "cpu")
    # A fingerprint computed once for every NFE is the same key as the one set_key computes itself.
    fp = model_fingerprint(other)
    assert key == set_key(other, 3, range(200_000, 200_012), torch.arange(12) % 10, "cpu", fp)


def test_no_sample_cache_stores_nothing(models, tmp_path):
    cache = tmp_path / "cache"
    argv = ["--classifier", str(models["classifier"]), "--out", str(tmp_path / "n"), "--no-sample-cache", *FAST]
    assert main([*argv, "--sample-cache", str(cache), "--model", str(models["teacher"]), "--num-samples", "8",
                 "--nfe", "1"]) == 0  # fmt: skip
    assert not cache.exists()


def test_partial_or_mismatched_sets_are_not_used(tmp_path):
    calls: list[tuple[int, int]] = []

    def generate(start: int, stop: int) -> torch.Tensor:
        calls.append((start, stop))
        return torch.full((stop - start, 1, 2, 2), float(start))

    key = {"format_version": 1, "model": "m", "nfe": 3}
    # Out of order: nothing stored.
    s = CachedSet(tmp_path, key, generate, 4)
    s(2, 4)
    s(0, 2)
    assert not list(tmp_path.iterdir())
    # Front to back: stored, then served.
    s = CachedSet(tmp_path, key, generate, 4)
    s(0, 2), s(2, 4)
    served = CachedSet(tmp_path, key, generate, 4)
    assert served.hit and served.seconds is not None
    assert torch.equal(served(0, 4)[:, 0, 0, 0], torch.tensor([0.0, 0.0, 2.0, 2.0]))
    # Another count, another key or a damaged sidecar: a miss.
    assert not CachedSet(tmp_path, key, generate, 5).hit
    assert not CachedSet(tmp_path, {**key, "nfe": 5}, generate, 4).hit
    meta = next(tmp_path.glob("*.json"))
    meta.write_text("{")
    assert not CachedSet(tmp_path, key, generate, 4).hit
    assert np.load(next(tmp_path.glob("*.npy"))).dtype == np.float32


def test_prune_removes_the_least_recently_used_sets(tmp_path):
    """Past the cache's limit the sets used least recently go (a hit renews a set); the set just stored stays."""
    root = tmp_path / "cache"
    key = {"model": "m", "nfe": 3}
    sets = []
    for i in range(3):
        cs = CachedSet(root, {**key, "seeds": i}, lambda a, b, v=float(i): torch.full((b - a, 1, 2, 2), v), 4)
        cs(0, 4)  # stored whole
        os.utime(cs.path, ns=(i * 10**9, i * 10**9))  # made at t = 0, 1, 2 s
        sets.append(cs)
    assert CachedSet(root, {**key, "seeds": 0}, lambda a, b: None, 4).hit  # set 0 used now: the newest
    size = sets[0].path.stat().st_size
    removed = prune(root, limit=2 * size)
    assert removed == [sets[1].path] and not sets[1].meta_path.exists()
    assert sets[0].path.exists() and sets[2].path.exists()
    assert prune(root, limit=0, keep=sets[2].path) == [sets[0].path] and sets[2].path.exists()
