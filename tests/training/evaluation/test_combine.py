"""``python -m training.evaluate combine``: fine-tune seeds measured by separate ``report`` runs give the same
mean ± sd as one report of all of them, compared with an earlier report's teacher; reports that measured
something else, a seed counted twice and an ambiguous member are refused."""

from __future__ import annotations

import json

import pytest

from tests.training.evaluation.helpers import make_models, make_seed_runs
from training.evaluate import main
from training.evaluation.combine import parse_group

FAST = ["--kid-subsets", "3", "--kid-subset-size", "8", "--batch", "8", "--device", "cpu", "--bootstrap", "20"]
SAMPLES = ["--num-samples", "12"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A teacher's report, one report per fine-tune seed, and one report of the three seeds together."""
    root = tmp_path_factory.mktemp("combine")
    m = make_models(root)
    seeds = make_seed_runs(root)

    def report(out, *args):
        assert main(["--classifier", str(m["classifier"]), "--out", str(root / out), *FAST, *SAMPLES, *args]) == 0
        return root / out

    out = {"root": root, "models": m}
    out["teacher"] = report("teacher", "--model", f"teacher={m['teacher']}", "--nfe", "1,3")
    out["seeds"] = [report(f"s{i}", "--model", f"d2o-f-s{i}={run}") for i, run in enumerate(seeds)]
    out["joint"] = report("joint", "--model", "d2o-f=" + ",".join(map(str, seeds)))
    # A report with two one-step figures: seed 0 and the plain generator.
    out["two"] = report("two", "--model", f"a={seeds[0]}", "--model", f"b={m['generator']}")
    return out


def combine(*args: str) -> int:
    return main(["combine", *args])


def test_separate_reports_give_the_joint_reports_mean(reports, tmp_path):
    members = ",".join(str(r) for r in reports["seeds"])
    assert combine("--group", f"d2o-f={members}", "--teacher-metrics", str(reports["teacher"]),
                   "--out", str(tmp_path)) == 0  # fmt: skip
    got = json.loads((tmp_path / "metrics.json").read_text())
    joint = json.loads((reports["joint"] / "metrics.json").read_text())
    (g,), (j,) = got["groups"], joint["groups"]
    assert [mem["run_seed"] for mem in g["members"]] == [0, 1, 2]
    for key in ("fd", "kid", "precision", "recall", "class_accuracy"):
        assert g[key] == j[key]  # measured by separate runs, the same figures to the last bit
    assert [mem["fd_ci"] for mem in g["members"]] == [mem["fd_ci"] for mem in j["members"]]
    # The teacher's figures came along, and the variant's mean (never a member) is compared with its best.
    teacher = json.loads((reports["teacher"] / "metrics.json").read_text())
    assert got["summary"]["teacher_best"] == teacher["summary"]["teacher_best"]
    entry = got["summary"]["one_step"]["d2o-f"]
    assert entry["fd"] == j["fd"]["mean"] and entry["fine_tune_seeds"] == 3
    assert entry["fd_minus_teacher_best"] == pytest.approx(j["fd"]["mean"] - teacher["summary"]["teacher_best"]["fd"])
    assert set(got["summary"]["one_step"]) == {"d2o-f"}
    assert [r["kind"] for r in got["results"]] == ["real", "teacher", "teacher", "one-step", "one-step", "one-step"]
    text = (tmp_path / "report.md").read_text()
    assert "## Combined from" in text and "samples.png" not in text
    for source in reports["seeds"]:
        assert f"`{source}`" in text
    assert (tmp_path / "fd_vs_nfe.png").stat().st_size > 0 and (tmp_path / "spectra.png").stat().st_size > 0
    assert set(got["spectra"]) == {"real", "teacher (NFE 3)", *(f"d2o-f/d2o-f-s{i} (1 step)" for i in range(3))}


def test_a_member_is_named_where_a_report_holds_several(reports, tmp_path, capsys):
    two, s1, s2 = reports["two"], *reports["seeds"][1:]
    assert combine("--group", f"g={two},{s1}", "--out", str(tmp_path)) == 2
    assert "holds 2 one-step figures (a, b); name one as REPORT#LABEL" in capsys.readouterr().err
    assert combine("--group", f"g={two}#c,{s1}", "--out", str(tmp_path)) == 2
    assert "holds no one-step figure 'c'" in capsys.readouterr().err
    assert combine("--group", f"g={two}#a,{s1},{s2}", "--out", str(tmp_path)) == 0
    got = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["label"] for m in got["groups"][0]["members"]] == ["g/a", "g/d2o-f-s1", "g/d2o-f-s2"]


def test_refusals(reports, tmp_path, capsys):
    s0, s1, _ = reports["seeds"]
    root, m = reports["root"], reports["models"]
    assert combine("--group", f"g={s0},{s0}", "--out", str(tmp_path)) == 2
    assert "fine-tune seed 0 is in it twice" in capsys.readouterr().err
    # Seed 0 of reports["two"] is seed 0 again under another label: still refused.
    assert combine("--group", f"g={s0},{reports['two']}#a", "--out", str(tmp_path)) == 2
    assert "fine-tune seed 0 is in it twice" in capsys.readouterr().err
    # Other noise seeds (8 samples against 12): no mean over them.
    other = root / "other"
    args = ["--classifier", str(m["classifier"]), "--out", str(other), *FAST, "--num-samples", "8"]
    assert main([*args, "--model", f"x={m['generator']}"]) == 0
    assert combine("--group", f"g={s1},{other}", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "measured something else" in err and "seeds" in err
    # A teacher report measured on other seeds is refused the same way; one without a teacher is no teacher.
    teacher = root / "teacher-8"
    assert main([*args[:2], "--out", str(teacher), *args[4:], "--model", f"t={m['teacher']}", "--nfe", "1"]) == 0
    assert combine("--group", f"g={s0},{s1}", "--teacher-metrics", str(teacher), "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{teacher} measured something else" in err and "seeds" in err
    assert combine("--group", f"g={s0},{s1}", "--teacher-metrics", str(other), "--out", str(tmp_path)) == 2
    assert "evaluated no teacher" in capsys.readouterr().err
    assert combine("--group", f"g={s0},{s1}", "--out", str(tmp_path / "x"), "--group", f"g={s0},{s1}") == 2
    assert "two groups share a name" in capsys.readouterr().err
    assert combine("--group", f"g={s0},{root / 'missing'}", "--out", str(tmp_path)) == 2
    assert "not a readable metrics.json" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["g", "g=", "g=a", "=a,b", "a/b=c,d"])
def test_group_spec_needs_a_name_and_two_members(spec):
    with pytest.raises(ValueError, match="a group is NAME=REPORT"):
        parse_group(spec)
