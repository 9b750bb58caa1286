"""Past one process, in the timing harness: one model data-parallel over 1 and 2 gloo processes, and a
12-training grid through the local process pool and through a local Dask cluster.

    python -m pytest benchmarks/scaling.py                   # the grid on both backends
    python -m pytest -m slow benchmarks/scaling.py           # data-parallel, 200,000 points (minutes)

Data-parallel: VQ-MAF (K = 32) with fitted charts on 200,000 helix points, trained by
:func:`vqflows.train_flow` for 2 epochs at global batch 512 in 1 process and in 2 ``gloo`` processes
(``torch.distributed`` on the loopback, one torch thread each), alternately over 2 rounds; the figures
are the median epoch times and the speed-up. On 2 shared cores two processes may not be faster — the
test suite checks that they take the same steps.

The grid is the paper grid's shape in small: helix, lissajous and knotted × maf and vq-maf × 2 trials,
5 epochs on 1,000 points each. Both backends run the same :class:`vqflows.experiments.PaperRun` list
with one torch thread per worker; the Dask figure includes starting the cluster (2 worker processes on
the loopback), the pool figure starting its spawned workers. The per-run numbers of the two backends
must be identical.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from pathlib import Path

import pytest
import torch

import vqflows
from vqflows.experiments import Runner, plan, run_grid
from vqflows.io import apply_overrides, hardware
from vqflows.runs import RunConfig
from vqflows.training import fit_chart_weights, fit_partition

DATASETS = ("helix", "lissajous", "knotted")
MODELS = ("maf", "vq-maf")
TRIALS, WORKERS, EPOCHS, N = 2, 2, 5, 1000
DDP_POINTS, DDP_EPOCHS, DDP_ROUNDS = 200_000, 2, 2


def _grid(out: Path):
    base = apply_overrides(RunConfig(), {"epochs": EPOCHS, "n": N, "chart_epochs": 5, "charts": 8})
    return plan(out, DATASETS, MODELS, range(TRIALS), base)


def _run(runs, runner: Runner) -> float:
    """Summed training seconds of the grid's runs (the grid must finish every run)."""
    report = run_grid(runs, runner)
    assert not report.failures and report.count() == len(runs), report.failures
    return sum(json.loads((r.folder / "metrics.json").read_text())["train_seconds"] for r in runs)


def test_grid_backends(benchmark, tmp_path):
    """Wall time of the 12-training grid through the local pool (``--jobs 2``) and a Dask LocalCluster."""
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client, LocalCluster

    figures: dict[str, float] = {}

    def both() -> tuple[list, list]:
        t0 = time.perf_counter()
        pool_runs = _grid(tmp_path / "pool")
        figures["pool_train_s"] = _run(pool_runs, Runner(jobs=WORKERS, progress=False))
        figures["pool_wall_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with LocalCluster(n_workers=WORKERS, threads_per_worker=1, host="127.0.0.1", processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            figures["dask_start_s"] = time.perf_counter() - t0
            dask_runs = _grid(tmp_path / "dask")
            figures["dask_train_s"] = _run(dask_runs, Runner(client=client, progress=False))
        figures["dask_wall_s"] = time.perf_counter() - t0
        return pool_runs, dask_runs

    pool_runs, dask_runs = benchmark.pedantic(both, rounds=1, iterations=1)
    same = all(json.loads((a.folder / "metrics.json").read_text())["test_log_likelihood"]
               == json.loads((b.folder / "metrics.json").read_text())["test_log_likelihood"]
               for a, b in zip(pool_runs, dask_runs))
    benchmark.extra_info.update(trainings=len(pool_runs), **figures, identical_across_backends=same,
                                load_average=hardware()["load_average"])
    assert same


def _ddp_rank(rank: int, world: int, port: int, state: str, points: int, epochs: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = vqflows.datasets.get("helix").sample(points, seed=0)
        model = vqflows.VQFlow.load(state)
        history = vqflows.train_flow(model, x, None, epochs=epochs, batch_size=512, early_stopping=None)
        if rank == 0:
            Path(out).write_text(json.dumps(history.epoch_seconds))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


@pytest.mark.slow  # the chart stage on 200,000 points and 8 trainings of 2 epochs: minutes on a CPU
def test_data_parallel(benchmark, tmp_path):
    """Median epoch seconds of 1 and 2 gloo processes (one thread each), alternating, and the speed-up."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", 32)
    x = vqflows.datasets.get("helix").sample(DDP_POINTS, seed=0)
    fit_partition(model, x, epochs=30)
    fit_chart_weights(model, x)
    model.save(tmp_path / "start")
    times: dict[int, list[float]] = {1: [], 2: []}

    def rounds() -> None:
        for _ in range(DDP_ROUNDS):
            for world in (1, 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                out = tmp_path / f"epochs-{world}.json"
                torch.multiprocessing.spawn(_ddp_rank, args=(world, port, str(tmp_path / "start"), DDP_POINTS,
                                                             DDP_EPOCHS, str(out)), nprocs=world, join=True)
                times[world].append(statistics.median(json.loads(out.read_text())))

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    benchmark.extra_info.update(epoch_s_1_process=one, epoch_s_2_processes=two, speedup_2_processes=one / two,
                                load_average=hardware()["load_average"])
