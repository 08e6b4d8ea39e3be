"""Live model management against real servers: admin-only reload of one model or all, under concurrent load
(every response matches the images of the version its X-Model-Version names), broken versions refused while the
old one keeps serving, model dirs added and removed, and the models_dir watch."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.auth import KeyFileError, load_admin_keys, load_api_keys
from service.config import Settings
from tests.service.conftest import CLASS_NAMES, COND, UNCOND, LiveServer, make_generator
from tests.service.helpers import decode_json_images, max_diff, metric_value
from training.checkpoint import file_sha256, save_model

ADMIN = {"Authorization": "Bearer admin-secret"}
SEEDS = range(100, 124)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of the conditional model (different weights, the same architecture), the second with a
    human version in its config.json."""
    root = tmp_path_factory.mktemp("versions")
    save_model(make_generator(16, 1, 10, seed=0), root / "v1", class_names=CLASS_NAMES)
    save_model(make_generator(16, 1, 10, seed=7), root / "v2", class_names=CLASS_NAMES, extra={"version": "2.0.0"})
    return {"v1": root / "v1", "v2": root / "v2"}


def put(src: Path, dst: Path) -> None:
    """Replace a model dir's files with another version's (what an operator's copy does)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)


@pytest.fixture
def models(tmp_path: Path, versions: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    put(versions["v1"], root / COND)
    return root


def short(path: Path, human: str | None = None) -> str:
    sha = file_sha256(path / "generator.safetensors")[:12]
    return f"{human}+{sha}" if human else sha


def reference(c: httpx.Client, seeds: range, label: int = 3) -> tuple[str, dict[int, np.ndarray]]:
    """What the server makes now for each seed, as pixels (one request; a seed's image does not depend on what
    shares its batch beyond float32 rounding: at most one level, as tests/service/test_batching.py checks)."""
    r = c.post("/v1/generate", json={"num_images": len(seeds), "seed": seeds[0], "class_labels": label})
    assert r.status_code == 200, r.text
    seeds_back = [img["seed"] for img in r.json()["images"]]
    return r.headers["x-model-version"], dict(zip(seeds_back, decode_json_images(r.json()), strict=True))


def test_admin_endpoints_are_off_without_an_admin_key(serve: Callable[..., LiveServer], models: Path) -> None:
    live = serve(models_dir=models, api_keys=["client"])
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for path in ("/v1/models/reload", f"/v1/models/{COND}/reload"):
            r = c.post(path, headers={"Authorization": "Bearer client"})
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", r.text
            assert "ONESTEP_ADMIN_KEYS" in r.json()["error"]["message"] and r.headers["x-request-id"]


def test_admin_keys_are_not_api_keys(serve: Callable[..., LiveServer], models: Path) -> None:
    live = serve(models_dir=models, api_keys=["client"], admin_keys=["admin-secret"])
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
            ({"Authorization": "Bearer client"}, 403),
        ):
            r = c.post(f"/v1/models/{COND}/reload", headers=headers)
            assert r.status_code == status and set(r.json()) == {"error"}, r.text
        assert c.post("/v1/generate", json={}, headers=ADMIN).status_code == 401  # and admin keys are not API keys
        r = c.post(f"/v1/models/{COND}/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["results"][0]["action"] == "unchanged", r.text
        r = c.post("/v1/models/no-such-model/reload", headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
        assert "no-such-model" not in c.get("/metrics").text  # unknown names never become labels


def test_admin_keys_must_differ_from_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("ops: same-secret\n")
    s = Settings(api_keys=["same-secret"], admin_keys_file=keys)
    with pytest.raises(KeyFileError, match="admin key 'ops' is also an API key") as err:
        load_admin_keys(s, load_api_keys(s))
    assert "same-secret" not in str(err.value)


def test_reload_under_load_never_drops_or_mixes_a_request(
    serve: Callable[..., LiveServer], models: Path, versions: dict[str, Path]
) -> None:
    """Clients keep generating while a new version replaces the old: every response is 200, and its images are
    exactly those of the version its X-Model-Version header (and model_version field) names."""
    live = serve(models_dir=models, admin_keys=["admin-secret"], max_batch_size=4, max_wait_ms=5)
    v1, v2 = short(versions["v1"]), short(versions["v2"], "2.0.0")
    with httpx.Client(base_url=live.url, timeout=60) as c:
        version, ref1 = reference(c, SEEDS)
        assert version == v1 == c.get("/v1/models").json()["data"][0]["version"]

        responses: list[httpx.Response] = []
        asked: list[tuple[int, int]] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(base_url=live.url, timeout=60) as own:
                while not stop.is_set():
                    n = rng.randint(1, 3)
                    seed = rng.choice(SEEDS[: len(SEEDS) - n + 1])
                    r = own.post("/v1/generate", json={"num_images": n, "seed": seed, "class_labels": 3})
                    with lock:
                        responses.append(r)
                        asked.append((seed, n))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        put(versions["v2"], models / COND)
        r = c.post(f"/v1/models/{COND}/reload", headers=ADMIN)
        time.sleep(0.8)
        stop.set()
        for t in threads:
            t.join(60)
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert (result["action"], result["previous_version"], result["version"]) == ("reloaded", v1, v2)
        version, ref2 = reference(c, SEEDS)
        assert version == v2
        # The versions differ far beyond batch rounding on every seed, so a mixed-up response cannot pass below.
        assert min(max_diff(ref1[s], ref2[s]) for s in SEEDS) > 8

        refs = {v1: ref1, v2: ref2}
        seen = {v1: 0, v2: 0}
        assert len(responses) > 8
        for resp, (seed, n) in zip(responses, asked, strict=True):
            assert resp.status_code == 200, resp.text
            body = resp.json()
            version = resp.headers["x-model-version"]
            assert body.get("model_version", version) == version
            seen[version] += 1
            assert [img["seed"] for img in body["images"]] == list(range(seed, seed + n))
            pixels = decode_json_images(body)
            diffs = [max_diff(px, refs[version][s]) for s, px in zip(range(seed, seed + n), pixels, strict=True)]
            assert max(diffs) <= 1, (version, seed, n, diffs)
        assert seen[v1] and seen[v2], seen  # the switch happened while clients were sending

        info = c.get("/v1/models").json()["data"][0]
        assert info["version"] == v2 and info["weights_sha256"] == file_sha256(versions["v2"] / "generator.safetensors")
        metrics = c.get("/metrics").text
        assert metric_value(metrics, f'onestep_model_info{{model="{COND}",version="{v2}"}}') == 1
        assert f'version="{v1}"' not in metrics
        assert metric_value(metrics, f'onestep_model_reloads_total{{model="{COND}",result="reloaded"}}') == 1
        assert metric_value(metrics, f'onestep_model_ready{{model="{COND}"}}') == 1
        assert c.get("/readyz").status_code == 200


def break_weights(model: Path) -> None:
    weights = model / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def break_architecture(model: Path) -> None:
    """A config.json whose network the weights do not fit (its weights hash is right)."""
    config = json.loads((model / "config.json").read_text())
    config["precond_kwargs"]["model_channels"] = 8
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage", [break_weights, break_architecture])
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    serve: Callable[..., LiveServer], models: Path, versions: dict[str, Path], damage: Callable[[Path], None]
) -> None:
    live = serve(models_dir=models, admin_keys=["admin-secret"])
    with httpx.Client(base_url=live.url, timeout=60) as c:
        before = reference(c, SEEDS[:4])
        put(versions["v2"], models / COND)
        damage(models / COND)
        r = c.post(f"/v1/models/{COND}/reload", headers=ADMIN)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["type"] == "reload_failed" and error["field"] == "model"
        assert f"version {before[0]} keeps serving" in error["message"] and "CheckpointError" in error["message"]
        version, images = reference(c, SEEDS[:4])  # the same version, the same images (alone in a batch of 4)
        assert version == before[0] and all(np.array_equal(images[s], before[1][s]) for s in SEEDS[:4])
        info = c.get("/v1/models").json()["data"][0]
        assert info["status"] == "ready" and info["version"] == before[0] and "CheckpointError" in info["reload_error"]
        assert c.get("/readyz").status_code == 200
        # Reload-all reports it the same way; once fixed, the reload goes through and the note is gone.
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 422 and r.json()["error"]["type"] == "reload_failed" and COND in r.text
        put(versions["v2"], models / COND)
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["results"][0]["action"] == "reloaded", r.text
        assert c.get("/v1/models").json()["data"][0]["reload_error"] is None
        metrics = c.get("/metrics").text
        assert metric_value(metrics, f'onestep_model_reloads_total{{model="{COND}",result="failed"}}') == 2


def test_reload_all_adds_removes_and_leaves_unchanged_models(
    serve: Callable[..., LiveServer], models: Path, models_dir: Path
) -> None:
    live = serve(models_dir=models, admin_keys=["admin-secret"])
    with httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [(COND, "unchanged")]
        shutil.copytree(models_dir / UNCOND, models / "added")
        shutil.copytree(models_dir / "some-classifier", models / "some-classifier")  # not a generator: skipped
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [(COND, "unchanged"), ("added", "added")]
        ok = c.post("/v1/generate", json={"model": "added", "seed": 1})
        assert ok.status_code == 200 and ok.headers["x-model-version"] == short(models / "added")
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [COND, "added"]

        r = c.post(f"/v1/models/{COND}/reload?force=true", headers=ADMIN)
        assert r.json()["results"][0]["action"] == "reloaded"  # unchanged files, reloaded all the same

        shutil.rmtree(models / "added")
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [(COND, "unchanged"), ("added", "removed")]
        gone = c.post("/v1/generate", json={"model": "added", "seed": 1})
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "model_not_found"
        assert 'onestep_model_ready{model="added"}' not in c.get("/metrics").text
        assert c.get("/readyz").status_code == 200


def test_the_watch_adds_replaces_and_removes_model_dirs(
    serve: Callable[..., LiveServer], models: Path, versions: dict[str, Path], models_dir: Path
) -> None:
    live = serve(models_dir=models, models_watch_s=0.1)
    v2 = short(versions["v2"], "2.0.0")

    def wait_for(check: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + 30
        while not check():
            assert time.monotonic() < end, f"the watch did not pick up {what}"
            time.sleep(0.05)

    with httpx.Client(base_url=live.url, timeout=30) as c:
        put(versions["v2"], models / COND)
        wait_for(lambda: c.post("/v1/generate", json={"seed": 1}).headers.get("x-model-version") == v2, "v2")
        shutil.copytree(models_dir / UNCOND, models / "watched")
        wait_for(lambda: c.post("/v1/generate", json={"model": "watched"}).status_code == 200, "a new dir")
        shutil.rmtree(models / "watched")
        wait_for(lambda: c.post("/v1/generate", json={"model": "watched"}).status_code == 404, "a removed dir")
        break_weights(models / COND)  # a broken copy is refused; v2 keeps serving
        wait_for(lambda: c.get("/v1/models").json()["data"][0]["reload_error"] is not None, "a broken dir")
        assert c.post("/v1/generate", json={"seed": 1}).headers["x-model-version"] == v2


def test_models_list_and_playground_show_version_and_licence(
    serve: Callable[..., LiveServer], models: Path, versions: dict[str, Path]
) -> None:
    """/v1/models names each model's version, weights hash, licence and origin; a fine-tune of an EDM import
    carries EDM's licence forward; the playground shows them."""
    teacher = {"model_dir": "models/edm-cifar10", "license": "CC-BY-NC-SA-4.0", "license_url": "https://cc.example"}
    save_model(
        make_generator(8, 3, 0, seed=2),
        models / "from-edm",
        extra={"training": {"stage": "finetune", "teacher": teacher}, "version": "0.1"},
    )
    live = serve(models_dir=models)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        data = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        ours, edm = data[COND], data["from-edm"]
        assert ours["version"] == short(versions["v1"]) and ours["license"] == "Apache-2.0"
        assert ours["license_url"] == "https://www.apache.org/licenses/LICENSE-2.0"
        assert edm["version"] == short(models / "from-edm", "0.1") and edm["license"] == "CC-BY-NC-SA-4.0"
        assert edm["license_url"] == "https://cc.example" and "models/edm-cifar10" in edm["origin"]
        r = c.post("/v1/generate", json={"model": "from-edm"}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.headers["x-model-version"] == edm["version"]
        page = c.get("/").text
        assert "X-Model-Version" in page and "license_url" in page and "origin" in page
