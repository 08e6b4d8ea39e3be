"""The protocol through ``python -m training.evaluate``: seed ranges by role (the same pixels as
``training.generate``), the range of every figure in the report, bootstrap intervals of FD, mean ± sd over
fine-tune seeds, the budget curve, and clear refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.training.evaluation.helpers import CLASSES, denoiser, make_models, make_seed_runs, training_extra
from training.checkpoint import save_model
from training.evaluate import main
from training.evaluation import pipeline
from training.evaluation.curves import crossing, group_curves, pick_snapshots
from training.evaluation.options import EvalOptions
from training.evaluation.sources import resolve_sources
from training.generate import main as generate
from training.images import to_uint8
from training.precond import D2OPrecond, OneStepGenerator

FAST = ["--kid-subsets", "3", "--kid-subset-size", "8", "--batch", "8", "--device", "cpu", "--bootstrap", "20"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    m = make_models(root)
    m["seeds"] = make_seed_runs(root)
    return m


def report(models, out, *args: str) -> dict:
    rc = main(["--classifier", str(models["classifier"]), "--out", str(out), *FAST, *args])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_test_range_gives_the_pixels_of_training_generate(models, tmp_path, monkeypatch):
    made: list[tuple[list[int], torch.Tensor]] = []
    original = pipeline.generator_fn

    def recording(model, kind, nfe, seeds, labels, device):
        fn = original(model, kind, nfe, seeds, labels, device)

        def generate_images(start: int, stop: int) -> torch.Tensor:
            images = fn(start, stop)
            made.append((list(seeds[start:stop]), images))
            return images

        return generate_images

    monkeypatch.setattr(pipeline, "generator_fn", recording)
    m = report(models, tmp_path / "r", "--model", str(models["generator"]), "--num-samples", "8", "--seeds", "test")
    first = [seeds for seeds, _ in made]
    assert first == [list(range(200_000, 200_008))]
    assert m["seeds"] == {"role": "test", "first": 200_000, "last": 200_007, "count": 8}
    rows = {r["label"]: r for r in m["results"]}
    assert rows["gen"]["seeds"] == m["seeds"] and rows["real (train split)"]["seeds"] is None
    # Sample 3 is seed 200003 of class 3 (classes run 0, 1, ..): training.generate gives the same pixels.
    npz = tmp_path / "one.npz"
    assert generate([str(models["generator"]), "--seeds", "200003", "--class", "3", "--npz", str(npz),
                     "--no-progress"]) == 0  # fmt: skip
    with np.load(npz) as f:
        theirs = f["images"][0].astype(int)
    ours = to_uint8(made[0][1][3:4])[0].astype(int)
    assert np.abs(ours - theirs).max() <= 1
    text = (tmp_path / "r" / "report.md").read_text()
    assert "test 200000–200007" in text and "the range every reported figure is measured on" in text


def test_validation_and_start_seeds_are_named(models, tmp_path):
    m = report(models, tmp_path / "v", "--model", str(models["generator"]), "--num-samples", "6", "--seeds",
               "validation")  # fmt: skip
    assert m["seeds"] == {"role": "validation", "first": 100_000, "last": 100_005, "count": 6}
    assert "not for reporting" in (tmp_path / "v" / "report.md").read_text()
    m = report(models, tmp_path / "s", "--model", str(models["generator"]), "--num-samples", "6", "--seeds", "7")
    assert m["seeds"] == {"role": None, "first": 7, "last": 12, "count": 6}
    assert "outside the ranges 7–12" in (tmp_path / "s" / "report.md").read_text()


def test_bootstrap_interval_holds_the_point_estimate(models, tmp_path):
    m = report(models, tmp_path / "b", "--model", f"teacher={models['teacher']}", "--model", str(models["generator"]),
               "--num-samples", "16", "--nfe", "1")  # fmt: skip
    assert m["bootstrap"]["rounds"] == 20
    for r in m["results"]:
        ci = r["fd_ci"]
        assert ci["rounds"] == 20 and ci["level"] == 0.95
        assert ci["low"] <= r["fd"] <= ci["high"] and ci["low"] < ci["high"]
    text = (tmp_path / "b" / "report.md").read_text()
    assert "95% CI" in text and "percentile bootstrap" in text
    gen = next(r for r in m["results"] if r["label"] == "gen")
    assert f"[{gen['fd_ci']['low']:.4g}, {gen['fd_ci']['high']:.4g}]" in text
    # --bootstrap 0: no interval.
    m = report(models, tmp_path / "n", "--model", str(models["generator"]), "--num-samples", "8", "--bootstrap", "0")
    assert m["bootstrap"] is None and all(r["fd_ci"] is None for r in m["results"])


def test_report_gives_precision_and_recall_by_class(models, tmp_path):
    m = report(models, tmp_path / "c", "--model", f"teacher={models['teacher']}", "--model", str(models["generator"]),
               "--num-samples", "20", "--nfe", "1", "--bootstrap", "0")  # fmt: skip
    assert m["class_names"] == CLASSES
    text = (tmp_path / "c" / "report.md").read_text()
    assert "## Precision and recall by class" in text
    assert "| set | " + " | ".join(CLASSES) + " | all |" in text
    for r in m["results"]:
        for key in ("recall", "precision"):
            by_class = [v for v in r[f"{key}_by_class"] if v is not None]
            assert len(r[f"{key}_by_class"]) == len(CLASSES) and by_class
            # A class-size-weighted mean lies between its smallest and largest class.
            assert min(by_class) - 1e-12 <= r[key] <= max(by_class) + 1e-12
    gen = next(r for r in m["results"] if r["label"] == "gen")
    cells = " | ".join("–" if v is None else f"{v:.3f}" for v in gen["recall_by_class"])
    assert f"| gen | {cells} | {gen['recall']:.3f} |" in text
    assert "- gen: largest recall shortfalls against the teacher at NFE 1:" in text


def test_group_reports_mean_and_sd_over_fine_tune_seeds(models, tmp_path):
    group = "d2o-f=" + ",".join(str(r) for r in models["seeds"])
    m = report(models, tmp_path / "g", "--model", f"teacher={models['teacher']}", "--model", group,
               "--num-samples", "12", "--nfe", "1")  # fmt: skip
    members = [r for r in m["results"] if r.get("group") == "d2o-f"]
    assert [r["run_seed"] for r in members] == [0, 1, 2]
    (g,) = m["groups"]
    assert g["group"] == "d2o-f" and len(g["members"]) == 3
    for key in ("fd", "precision", "recall", "class_accuracy"):
        values = [r[key] for r in members]
        assert g[key]["mean"] == pytest.approx(np.mean(values))
        assert g[key]["sd"] == pytest.approx(np.std(values, ddof=1))
    # The summary compares the variant's mean with the teacher, never a member alone.
    assert set(m["summary"]["one_step"]) == {"d2o-f"}
    entry = m["summary"]["one_step"]["d2o-f"]
    assert entry["fd"] == pytest.approx(g["fd"]["mean"]) and entry["fine_tune_seeds"] == 3
    text = (tmp_path / "g" / "report.md").read_text()
    assert "## Mean ± sd over fine-tune seeds" in text
    for r in members:
        assert f"{r['label']} (seed {r['run_seed']}) {r['fd']:.4g}" in text


def test_group_of_ema_tracks_names_members_by_their_runs(models, tmp_path):
    """The same --ema-extra track of three runs shares its dir name: members are named by run and track, and each
    takes its seed from its run's config.json."""
    tracks = []
    for run in models["seeds"]:
        track = tmp_path / run.name / "ema-10kimg-rampup0.2"
        shutil.copytree(run / "network-snapshot-000002", track / "network-snapshot-000002")
        shutil.copy(run / "config.json", tmp_path / run.name / "config.json")
        tracks.append(track)
    members = resolve_sources("ema10=" + ",".join(str(t) for t in tracks))
    assert [m.label for m in members] == [f"ema10/{r.name}/ema-10kimg-rampup0.2" for r in models["seeds"]]
    assert [m.run_seed for m in members] == [0, 1, 2] and {m.group for m in members} == {"ema10"}
    assert [m.run_dir for m in members] == tracks
    plain = resolve_sources("d2o-f=" + ",".join(str(r) for r in models["seeds"]))  # distinct names stay short
    assert [m.label for m in plain] == [f"d2o-f/{r.name}" for r in models["seeds"]]


def test_budget_curve_has_a_point_per_snapshot(models, tmp_path):
    m = report(models, tmp_path / "c", "--model", f"teacher={models['teacher']}", "--model",
               f"d2o-f={models['run']}", "--num-samples", "8", "--curve-samples", "6", "--nfe", "1,3")  # fmt: skip
    points = m["curves"]["d2o-f"]
    assert [p["images_seen"] for p in points] == [48, 2048]
    # The helpers' teacher saw 1000 images: the share of the teacher's images is stated for every point.
    assert [p["teacher_fraction"] for p in points] == [0.048, 2.048]
    budget = m["budget"]
    assert budget["seeds"] == {"role": "test", "first": 200_000, "last": 200_005, "count": 6}
    assert budget["teacher_images"] == 1000 and budget["teacher"]["fd"] == m["summary"]["teacher_best"]["fd"]
    c = budget["crossings"]["d2o-f"]
    assert c == crossing(points, budget["teacher"]["fd"])
    text = (tmp_path / "c" / "report.md").read_text()
    assert "## Budget" in text and "test 200000–200005" in text and "% of teacher's" in text
    assert ("reaches the teacher's best" in text) == c["crosses"]
    assert (tmp_path / "c" / "fd_vs_images.png").stat().st_size > 0


def test_seed_groups_get_a_mean_curve_across_offset_snapshots(models, tmp_path):
    """Three seeds whose second snapshots sit 300 images apart (as resumed runs do) get one mean point per budget
    in the plot, the crossing and the report's table, with each seed's own images beside it."""
    runs = []
    for i, seed_run in enumerate(models["seeds"]):
        run = tmp_path / "runs" / seed_run.name
        shutil.copytree(seed_run, run)
        later = OneStepGenerator(denoiser(D2OPrecond, 20 + i))
        save_model(later, run / "network-snapshot-000004", class_names=CLASSES,
                   extra=training_extra("finetune", 4000 + 300 * i))  # fmt: skip
        runs.append(run)
    m = report(models, tmp_path / "g", "--model", "g=" + ",".join(str(r) for r in runs), "--num-samples", "8",
               "--curve-samples", "6", "--curve-kimg", "2,4", "--teacher-metrics",
               str(_teacher_report(models, tmp_path / "t")))  # fmt: skip
    (mean,) = [points for label, points in m["budget"]["curves"].items() if label == "g (mean of 3 seeds)"]
    assert [p["member_images_seen"] for p in mean] == [[2048] * 3, [4000, 4300, 4600]]
    assert mean[1]["images_seen"] == pytest.approx(4300)
    fds = [next(p["fd"] for p in m["curves"][label] if p["images_seen"] == x)
           for label, x in zip((f"g/{r.name}" for r in runs), (4000, 4300, 4600), strict=True)]  # fmt: skip
    assert mean[1]["fd"] == pytest.approx(np.mean(fds)) and mean[1]["count"] == 3
    assert m["budget"]["crossings"]["g (mean of 3 seeds)"] == crossing(mean, m["budget"]["teacher"]["fd"])
    text = (tmp_path / "g" / "report.md").read_text()
    assert "### g (mean of 3 seeds)" in text and "| 4000 / 4300 / 4600 |" in text


def _teacher_report(models, out):
    report(models, out, "--model", f"teacher={models['teacher']}", "--num-samples", "6", "--nfe", "1",
           "--no-curve")  # fmt: skip
    return out / "metrics.json"


def test_curve_kimg_picks_the_nearest_snapshots(models, tmp_path):
    snaps = [(k * 1000, f"s{k}") for k in (2, 4, 6, 8, 60, 62)]
    assert pick_snapshots(snaps, None) == snaps
    # Nearest each point, once each, in order; a tie goes to the earlier snapshot.
    assert pick_snapshots(snaps, (61, 5, 6.4, 1000)) == [(4000, "s4"), (6000, "s6"), (60000, "s60"), (62000, "s62")]
    assert pick_snapshots([], (6,)) == []
    with pytest.raises(ValueError, match="--curve-kimg"):
        EvalOptions(curve_kimg=(0.0, 6.0))
    m = report(models, tmp_path / "k", "--model", f"d2o-f={models['run']}", "--num-samples", "8",
               "--curve-samples", "6", "--curve-kimg", "2")  # fmt: skip
    assert [p["images_seen"] for p in m["curves"]["d2o-f"]] == [2048]
    assert "The snapshots nearest 2 kimg, from the test" in (tmp_path / "k" / "report.md").read_text()


def test_curves_take_their_target_from_an_earlier_teachers_report(models, tmp_path, capsys):
    """A teacher's multi-step set is hours on a CPU: a later report of fine-tune runs alone takes the teacher's best
    from an earlier report, where it measured the same seeds with the same features and reference; else it refuses."""
    first = report(models, tmp_path / "t", "--model", f"teacher={models['teacher']}", "--num-samples", "8",
                   "--nfe", "1,3", "--no-curve")  # fmt: skip
    later = report(models, tmp_path / "r", "--model", f"d2o-f={models['run']}", "--num-samples", "8",
                   "--teacher-metrics", str(tmp_path / "t" / "metrics.json"))  # fmt: skip
    budget = later["budget"]
    assert budget["teacher"]["fd"] == first["summary"]["teacher_best"]["fd"]
    assert budget["teacher"]["from"] == str(tmp_path / "t" / "metrics.json") and budget["teacher_images"] == 1000
    assert budget["crossings"]["d2o-f"] == crossing(later["curves"]["d2o-f"], budget["teacher"]["fd"])
    assert "from the earlier report" in (tmp_path / "r" / "report.md").read_text()
    # Other seeds (6 curve samples against the teacher's 8): refused, naming what differs.
    args = ["--classifier", str(models["classifier"]), "--out", str(tmp_path / "x"), *FAST, "--model",
            f"d2o-f={models['run']}", "--num-samples", "8", "--curve-samples", "6"]  # fmt: skip
    assert main([*args, "--teacher-metrics", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "measured something else" in err and "seeds" in err
    assert main([*args, "--teacher-metrics", str(tmp_path / "r" / "report.md")]) == 2
    assert "not a readable metrics.json" in capsys.readouterr().err


def test_crossing_and_group_curves():
    points = [
        {"images_seen": 1000, "fd": 3.0, "teacher_fraction": 0.01},
        {"images_seen": 3000, "fd": 1.0, "teacher_fraction": 0.03},
    ]
    c = crossing(points, 2.0)
    assert c["crosses"] and c["images_seen"] == pytest.approx(2000) and c["teacher_fraction"] == pytest.approx(0.02)
    c = crossing(points, 0.5)
    assert not c["crosses"] and c["gap"] == pytest.approx(0.5) and c["images_seen"] == 3000
    assert crossing(points, 5.0)["images_seen"] == 1000
    curves = {
        "a": [{"images_seen": 1, "fd": 1.0, "recall": 0.5}, {"images_seen": 2, "fd": 2.0, "recall": 0.6}],
        "b": [{"images_seen": 1, "fd": 3.0, "recall": 0.7}],
    }
    (point,) = group_curves(curves, {"g": ["a", "b"]})["g"]
    assert point["fd"] == 2.0 and point["fd_sd"] == pytest.approx(np.std([1.0, 3.0], ddof=1)) and point["count"] == 2


def _curve(*points: tuple[int, float, float]) -> list[dict]:
    return [{"images_seen": x, "fd": fd, "recall": r, "teacher_fraction": x / 1_200_000} for x, fd, r in points]


def test_group_curves_pair_seeds_snapshotted_apart():
    """Seeds resumed at different offsets snapshot a few hundred images apart: their points at the same budget
    still make one mean point (not only the rare budget all share exactly), and a budget one seed never reached
    is left out rather than averaged with that seed's last point."""
    curves = {
        "s0": _curve((6000, 1.8, 0.68), (30000, 0.57, 0.76), (60000, 0.38, 0.79), (120000, 0.27, 0.79)),
        "s1": _curve((6000, 1.8, 0.65), (29096, 0.64, 0.76), (59096, 0.38, 0.78), (120000, 0.27, 0.79)),
        "s2": _curve((6000, 1.9, 0.66), (30000, 0.57, 0.77), (59704, 0.36, 0.78)),
    }
    groups = {"g": ["s0", "s1", "s2"]}
    points = group_curves(curves, groups, kimg=[6, 30, 60, 120])["g"]
    assert [p["member_images_seen"] for p in points] == [
        [6000, 6000, 6000], [30000, 29096, 30000], [60000, 59096, 59704]
    ]  # fmt: skip
    assert points[1]["images_seen"] == pytest.approx((30000 + 29096 + 30000) / 3)
    assert points[1]["fd"] == pytest.approx((0.57 + 0.64 + 0.57) / 3)
    assert points[2]["teacher_fraction"] == pytest.approx(points[2]["images_seen"] / 1_200_000)
    # Without the requested budgets the first seed's points are the grid: the same pairing.
    assert [p["member_images_seen"] for p in group_curves(curves, groups)["g"]] == [
        p["member_images_seen"] for p in points
    ]
    # The mean curve crosses where the seeds do, not between the few budgets they share exactly.
    two = group_curves(curves, {"g": ["s0", "s1"]}, kimg=[6, 30, 60, 120])["g"]
    assert len(two) == 4
    assert crossing(two, 0.5)["images_seen"] < 60000
    # A seed with no snapshot near a budget leaves that budget out.
    far = {"a": _curve((30000, 1.0, 0.5)), "b": _curve((45000, 2.0, 0.6))}
    assert group_curves(far, {"g": ["a", "b"]}, kimg=[30]) == {}


def test_clear_refusals(models, tmp_path, capsys):
    base = ["--model", str(models["generator"]), "--classifier", str(models["classifier"]), "--out", str(tmp_path)]
    assert main([*base, "--num-samples", "50001"]) == 2
    assert "test range holds 50000 seeds" in capsys.readouterr().err
    assert main([*base, "--seeds", "validation", "--num-samples", "60000"]) == 2
    assert "validation range holds 50000" in capsys.readouterr().err
    assert main([*base, "--seeds", "train"]) == 2
    assert "unknown seed range 'train'" in capsys.readouterr().err
    assert main([*base, "--curve-samples", "50001"]) == 2
    assert "holds 50000" in capsys.readouterr().err
    assert main([*base, "--bootstrap", "1"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
    lone = f"g={models['seeds'][0]},"
    assert main(["--model", lone, "--out", str(tmp_path)]) == 2
    assert "at least two dirs" in capsys.readouterr().err
    mixed = f"g={models['teacher']},{models['generator']}"
    assert main(["--model", mixed, "--out", str(tmp_path)]) == 2
    assert "mixes generators and denoisers" in capsys.readouterr().err


def test_score_states_and_checks_the_seeds(models, tmp_path, capsys):
    npz = tmp_path / "test.npz"
    assert generate([str(models["generator"]), "--seeds", "200000-200019", "--npz", str(npz), "--no-progress"]) == 0
    score = ["score", "--images", str(npz), "--ref", "synthetic:64", "--classifier", str(models["classifier"])]
    score += ["--kid-subsets", "3", "--kid-subset-size", "8", "--bootstrap", "20", "--out", str(tmp_path / "s.json")]
    assert main([*score, "--seeds", "test"]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["seeds"] == {"role": "test", "first": 200_000, "last": 200_019, "count": 20, "contiguous": True}
    ci = result["fd_ci"]
    assert ci["rounds"] == 20 and ci["low"] <= result["fd"] <= ci["high"]
    capsys.readouterr()
    assert main([*score, "--seeds", "validation"]) == 2
    err = capsys.readouterr().err
    assert "seeds 200000-200019, not the validation range" in err and "--seeds 100000-100019" in err
