"""A Gaussian mixture's fit beside a busy worker, with the BLAS threads left at every core or bounded to one.

    python benchmarks/blas_threads.py            # knotted, seed 0, three interleaved rounds

What a grid worker sees: another process trains a flow on the other core (here a loop of 2048x64
matrix products in one torch thread) while this one fits ``gmm`` (the count chosen on validation, as
the Table 1 row). Prints each fit's seconds and the medians; the runner bounds every task's BLAS
threads to its ``threads`` (:func:`vqflows.experiments.runner._call`).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one


def _busy(stop) -> None:
    import torch

    torch.set_num_threads(1)
    a, w = torch.randn(2048, 64), torch.randn(64, 64)
    while not stop.is_set():
        for _ in range(50):
            a = torch.tanh(a @ w * 0.1)


def main(rounds: int = 3) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    import vqflows
    from vqflows.baselines import fit_baseline

    torch.set_num_threads(1)
    splits = vqflows.datasets.load("knotted", n=10_000, seed=0)
    fit_baseline("gmm", splits.train[:500], splits.val[:200], seed=0, candidates=[8])  # imports, caches
    stop = multiprocessing.get_context("spawn").Event()
    neighbour = multiprocessing.get_context("spawn").Process(target=_busy, args=(stop,), daemon=True)
    neighbour.start()
    time.sleep(3)
    times: dict[str, list[float]] = {"every core": [], "one thread": []}
    try:
        for _ in range(rounds):
            for name in times:
                t0 = time.perf_counter()
                with threadpool_limits(limits=1 if name == "one thread" else None):
                    fit_baseline("gmm", splits.train, splits.val, seed=0)
                times[name].append(round(time.perf_counter() - t0, 2))
                print(json.dumps({"blas": name, "seconds": times[name][-1]}), flush=True)
    finally:
        stop.set()
        neighbour.join(10)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"median_seconds": medians, "ratio": round(medians["one thread"] / medians["every core"], 2)}))


if __name__ == "__main__":
    main()
