"""Past one process, side by side in one run: one model data-parallel over 1 and 2 gloo processes, and a
12-training grid through the local process pool and through a local Dask cluster.

    PYTHONPATH=. python benchmarks/scaling.py [--ddp-points 200000] [--ddp-epochs 2] [--workers 2] [--epochs 5] [--n 1000]

Data-parallel part: VQ-MAF (K = 32) with fitted charts on ``--ddp-points`` helix points, trained by
:func:`vqflows.train_flow` for ``--ddp-epochs`` epochs at global batch 512 in 1 process and in 2
``gloo`` processes (``torch.distributed`` on the loopback, one torch thread each), alternately over
``--rounds`` rounds; the figure is the median epoch time. On 2 shared cores two processes may not be
faster — the test suite checks that they take the same steps.

The grid is the paper grid's shape in small: helix, lissajous and knotted × maf and vq-maf × 2 trials,
``--epochs`` epochs on ``--n`` points each. Both backends run the same :class:`vqflows.experiments.PaperRun`
list with one torch thread per worker; the Dask column includes starting the cluster (2 worker
processes on the loopback) and the pool column starting its spawned workers. The per-run numbers of
the two backends are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vqflows.experiments import Runner, plan, run_grid
from vqflows.io import apply_overrides, hardware
from vqflows.runs import RunConfig

DATASETS = ("helix", "lissajous", "knotted")
MODELS = ("maf", "vq-maf")
TRIALS = 2


def grid(out: Path, epochs: int, n: int):
    base = apply_overrides(RunConfig(), {"epochs": epochs, "n": n, "chart_epochs": 5, "charts": 8})
    return plan(out, DATASETS, MODELS, range(TRIALS), base)


def timed(runs, runner: Runner) -> tuple[float, float]:
    """(wall seconds of the grid, summed training seconds of its runs)."""
    t0 = time.perf_counter()
    report = run_grid(runs, runner)
    wall = time.perf_counter() - t0
    if report.failures or report.count() != len(runs):
        raise SystemExit(f"grid failed: {report.failures}")
    return wall, sum(json.loads((r.folder / "metrics.json").read_text())["train_seconds"] for r in runs)


def _ddp_rank(rank: int, world: int, port: int, state: str, points: int, epochs: int, out: str) -> None:
    import os

    import torch

    import vqflows

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


def data_parallel(points: int, epochs: int, rounds: int) -> dict[int, list[float]]:
    """Epoch seconds of 1 and 2 gloo processes, alternating, ``rounds`` times each."""
    import socket
    import statistics

    import torch

    import vqflows

    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = vqflows.build(3, "maf", 32)
        x = vqflows.datasets.get("helix").sample(points, seed=0)
        model.fit_charts(x, epochs=30)
        model.fit_weights(x)
        model.save(Path(tmp) / "start")
        for _ in range(rounds):
            for world in (1, 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                out = Path(tmp) / f"epochs-{world}.json"
                torch.multiprocessing.spawn(_ddp_rank, args=(world, port, str(Path(tmp) / "start"), points, epochs,
                                                             str(out)), nprocs=world, join=True)
                times[world].append(statistics.median(json.loads(out.read_text())))
    return times


def main() -> None:
    import statistics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ddp-points", type=int, default=200_000)
    p.add_argument("--ddp-epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    from dask.distributed import Client, LocalCluster

    ddp = data_parallel(args.ddp_points, args.ddp_epochs, args.rounds)
    one, two = statistics.median(ddp[1]), statistics.median(ddp[2])
    print(f"One model, data-parallel: VQ-MAF (K = 32), {args.ddp_points:,} helix points, global batch 512, "
          f"median epoch over {args.rounds} alternating rounds of {args.ddp_epochs} epochs")
    print()
    print("| processes (gloo, 1 thread each) | epoch time (s) | speed-up |")
    print("|---|---:|---:|")
    print(f"| 1 | {one:.1f} | 1.00 |")
    print(f"| 2 | {two:.1f} | {one / two:.2f} |")
    print()

    with tempfile.TemporaryDirectory() as tmp:
        pool_runs = grid(Path(tmp) / "pool", args.epochs, args.n)
        pool_wall, pool_train = timed(pool_runs, Runner(jobs=args.workers, progress=False))

        t0 = time.perf_counter()
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            start = time.perf_counter() - t0
            dask_runs = grid(Path(tmp) / "dask", args.epochs, args.n)
            dask_wall, dask_train = timed(dask_runs, Runner(client=client, progress=False))
        same = all(json.loads((a.folder / "metrics.json").read_text())["test_log_likelihood"]
                   == json.loads((b.folder / "metrics.json").read_text())["test_log_likelihood"]
                   for a, b in zip(pool_runs, dask_runs))

    hw = hardware()
    print(f"{len(pool_runs)} trainings ({', '.join(DATASETS)} × {', '.join(MODELS)} × {TRIALS} trials, "
          f"{args.epochs} epochs, n={args.n}), {args.workers} workers of one torch thread")
    print(f"machine: {hw['cpu']}, {hw['usable_cores']} usable cores, load average {hw['load_average']}")
    print()
    print("| backend | wall time (s) | of which cluster start (s) | summed training time (s) |")
    print("|---|---:|---:|---:|")
    print(f"| local pool (--jobs {args.workers}) | {pool_wall:.1f} | — | {pool_train:.1f} |")
    print(f"| Dask LocalCluster ({args.workers} workers) | {dask_wall + start:.1f} | {start:.1f} | {dask_train:.1f} |")
    print()
    print(f"per-run test log-likelihoods identical across backends: {same}")


if __name__ == "__main__":
    main()
