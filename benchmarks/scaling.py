"""Wall time of a 12-training grid through the local process pool and through a local Dask cluster, side by side.

    python benchmarks/scaling.py [--workers 2] [--epochs 5] [--n 1000]

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    from dask.distributed import Client, LocalCluster

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
