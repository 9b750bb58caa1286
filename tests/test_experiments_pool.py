"""The local process pool: records and errors, a lost worker retried, and no orphaned worker when the driver is killed.

Each pool spawns interpreters that import torch, a few seconds apiece on a busy machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_experiments import _tasks, square

from vqflows import io
from vqflows.experiments.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def dies_once(spec: dict, folder: Path) -> dict:
    """A task whose worker is killed the first time it runs it (or every time with ``always``)."""
    marker = folder / "attempted"
    if spec.get("always") or not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"record.json": {"survived": True}}


@pytest.fixture(scope="module")
def pool_runs(tmp_path_factory):
    """One pass of the local pool (2 workers) over good, failing and worker-killing tasks."""
    folder = tmp_path_factory.mktemp("pool")
    tasks = (_tasks(folder / "square", square, [{"x": 2}, {"x": -1}, {"x": 3}])
             + _tasks(folder / "once", dies_once, [{}]) + _tasks(folder / "always", dies_once, [{"always": True}]))
    report = Runner(jobs=2, retries=1, progress=False).run(tasks, skipped=4)
    return folder, report


@pytest.mark.slow  # four pools of two workers: 20 s on a busy two-core machine
def test_pool_writes_records_and_errors(pool_runs):
    folder, report = pool_runs
    assert (report.total, report.skipped, report.count("trained")) == (9, 4, 3)
    records = [io.read_json(folder / "square" / f"run-{i}" / "record.json") for i in (0, 2)]
    assert [r["square"] for r in records] == [4, 9]
    assert all(r["pid"] != os.getpid() and r["threads"] == 1 for r in records)  # in workers, one thread each
    assert all(r["blas"] == 1 for r in records)  # BLAS too
    error = io.read_json(folder / "square" / "run-1" / "error.json")
    assert error["error"] == "ValueError: x: expected a number >= 0, got -1" and error["spec"] == {"x": -1}
    assert not (folder / "square" / "run-1" / "record.json").exists()


@pytest.mark.slow
def test_pool_retries_a_run_whose_worker_died(pool_runs):
    folder, report = pool_runs
    assert io.read_json(folder / "once" / "run-0" / "record.json") == {"survived": True}
    failures = dict(report.failures)
    assert set(failures) == {"square/run-1", "always/run-0"} and "worker lost" in failures["always/run-0"]
    assert io.read_json(folder / "always" / "run-0" / "error.json")["error"].startswith("worker lost")


# --------------------------------------------------------------------------------- killed benchmark


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_benchmark_leaves_no_workers_and_rerun_finishes_the_rest(tmp_path):
    out = tmp_path / "grid"
    argv = [sys.executable, "-m", "vqflows", "benchmark", "--table", "1", "--datasets", "helix", "--models", "maf",
            "--trials", "4", "--epochs", "3", "--set", "n=600", "transforms=1", "hidden=8", "--no-figures",
            "--quiet", "--out", str(out)]
    proc = subprocess.Popen(argv + ["--jobs", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/*/seed-*/metrics.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "workers outlived the killed benchmark"

    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed-*/metrics.json")}
    assert 1 <= len(finished)
    assert (out / io.LOCK).exists()  # the killed driver's claim is stale and taken over
    subprocess.run(argv + ["--jobs", "1"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    now = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed-*/metrics.json")}
    assert len(now) == 4 and all(now[p] == t for p, t in finished.items())
    passes = io.read_json(out / "passes.json")
    assert (passes[-1]["skipped"], passes[-1]["trained"]) == (len(finished), 4 - len(finished))
