"""Run-dir numbering: sequential, and unique when runs start side by side."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from training.rundir import create_run_dir


def test_numbers_follow_the_highest_existing(tmp_path: Path):
    (tmp_path / "00007-old").mkdir()
    (tmp_path / "notes").mkdir()
    assert create_run_dir(tmp_path, "a").name == "00008-a"
    assert create_run_dir(tmp_path, "b").name == "00009-b"


def _create_after_barrier(outdir: str, desc: str, barrier, out) -> None:
    barrier.wait()
    out.put(create_run_dir(outdir, desc).name)


def test_processes_started_together_get_distinct_numbers(tmp_path: Path):
    ctx = mp.get_context("spawn")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_after_barrier, args=(str(tmp_path), f"run{i}", barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    names = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    numbers = sorted(int(name.split("-")[0]) for name in names)
    assert numbers == list(range(n)), names
