"""GPU against CPU: flow-epoch time and mixture-density throughput of VQ-MAF, side by side in one run.

    python benchmarks/gpu.py                 # both devices when CUDA is available, else the CPU column only
    python benchmarks/gpu.py --points 1000000 --rounds 5

Prints one table: seconds per training epoch (hard cells and the mixture objective) on ``--points``
helix points, and ``log_prob`` throughput (points/s, K = 32, all charts) under inference, median of
``--rounds`` interleaved rounds. One CPU thread, as the CLI uses.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vqflows
from vqflows.training import train_flow


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(device: torch.device, x: torch.Tensor) -> vqflows.VQFlow:
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", 32).to(device)
    model.fit_charts(x[:20_000], epochs=5)
    model.fit_weights(x[:20_000])
    return model


def _epoch(model, x, objective: str, batch: int) -> float:
    _sync(x.device)
    t = time.perf_counter()
    train_flow(model, x, None, epochs=1, batch_size=batch, objective=objective, early_stopping=None)
    _sync(x.device)
    return time.perf_counter() - t


def _throughput(model, x) -> float:
    _sync(x.device)
    t = time.perf_counter()
    with torch.inference_mode():
        model.log_prob(x)
    _sync(x.device)
    return x.shape[0] / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--score-points", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    data = vqflows.datasets.get("helix").sample(args.points, seed=0)
    models = {d: _model(d, data.to(d)) for d in devices}
    rows = {d: {"cells": [], "mixture": [], "score": []} for d in devices}
    for _ in range(args.rounds):
        for d in devices:  # interleaved, so that load on a shared machine hits both columns alike
            x = data.to(d)
            rows[d]["cells"].append(_epoch(models[d], x, "cells", args.batch))
            rows[d]["mixture"].append(_epoch(models[d], x, "mixture", args.batch))
            rows[d]["score"].append(_throughput(models[d], x[:args.score_points]))
    name = {d: (torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu, 1 thread") for d in devices}
    print(f"VQ-MAF, K = 32, helix; {args.points:,} training points, batch {args.batch}; median of {args.rounds}")
    print(f"| | {' | '.join(name[d] for d in devices)} |")
    print(f"|---|{'---:|' * len(devices)}")
    for key, label, fmt in (("cells", "epoch, hard cells (s)", "{:.2f}"), ("mixture", "epoch, mixture top-4 (s)", "{:.2f}"),
                            ("score", "log_prob throughput (points/s)", "{:,.0f}")):
        print(f"| {label} | {' | '.join(fmt.format(statistics.median(rows[d][key])) for d in devices)} |")
    if len(devices) == 2:
        cpu, gpu = devices
        print(f"\nGPU speed-up: epoch {statistics.median(rows[cpu]['cells']) / statistics.median(rows[gpu]['cells']):.1f}×, "
              f"scoring {statistics.median(rows[gpu]['score']) / statistics.median(rows[cpu]['score']):.1f}×")


if __name__ == "__main__":
    main()
