"""The job runner on a local Dask cluster: the grid gives the tables of the local runner; a lost worker is retried."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from vqflows import io
from vqflows.experiments import cli
from vqflows.experiments.runner import Runner, Task

distributed = pytest.importorskip("distributed")

GRID = ["--table", "1", "--datasets", "helix,lissajous", "--models", "maf,vq-maf", "--trials", "1", "--epochs", "2",
        "--set", "n=300", "chart_epochs=2", "charts=4", "partition=vqae", "transforms=2", "hidden=16", "--no-figures", "--quiet"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
                                  dashboard_address=None, resources={"GPU": 1}) as cluster:
        yield cluster


def kill_worker_once(spec: dict, folder: Path) -> dict:
    """A task that kills the Dask worker running it the first time."""
    marker = folder / "attempted"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"record.json": {"pid": os.getpid(), "x": spec["x"]}}


def test_grid_on_dask_gives_the_tables_of_the_local_runner(cluster, tmp_path):
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert cli.main(GRID + ["--jobs", "1", "--out", str(local)]) == 0
    assert cli.main(GRID + ["--scheduler", cluster.scheduler_address, "--gpus-per-run", "0.5",
                            "--out", str(dask)]) == 0
    for name in ("table1", "table1-gap"):
        assert (dask / "tables" / f"{name}.json").read_text() == (local / "tables" / f"{name}.json").read_text()
        assert (dask / "tables" / f"{name}.md").read_text() == (local / "tables" / f"{name}.md").read_text()
    ours = json.loads((dask / "runs" / "helix" / "vq-maf" / "seed-0" / "metrics.json").read_text())
    theirs = json.loads((local / "runs" / "helix" / "vq-maf" / "seed-0" / "metrics.json").read_text())
    assert ours["test_log_likelihood"] == theirs["test_log_likelihood"]
    # the second pass finds every run finished
    assert cli.main(GRID + ["--scheduler", cluster.scheduler_address, "--out", str(dask)]) == 0
    last = io.read_json(dask / "passes.json")[-1]
    assert (last["skipped"], last["trained"]) == (4, 0)


@pytest.mark.slow  # a worker killed and restarted by its nanny: 13 s
def test_lost_worker_is_retried(cluster, tmp_path):
    client = distributed.Client(cluster)
    try:
        tasks = [Task(kill_worker_once, {"x": x}, tmp_path / f"run-{x}", label=f"run-{x}") for x in range(2)]
        report = Runner(client=client, retries=2, progress=False).run(tasks)
    finally:
        client.close()
    assert report.count("trained") == 2 and not report.failures
    assert [io.read_json(tmp_path / f"run-{x}" / "record.json")["x"] for x in range(2)] == [0, 1]
