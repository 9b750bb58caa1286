"""GPU beside CPU in the timing harness: flow-epoch time and mixture-density throughput of VQ-MAF.

    python -m pytest -m gpu benchmarks/gpu.py               # needs a CUDA device (skipped without one)

Seconds per training epoch (hard cells and the mixture objective) on 200,000 helix points at batch
512, and ``log_prob`` throughput (points/s, K = 32, all charts) on 100,000 points under inference,
medians of 3 rounds interleaved device by device, so that load on a shared machine hits both columns
alike. One CPU thread, as the command line uses.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import vqflows
from vqflows.training import fit_chart_weights, fit_partition, train_flow

POINTS, SCORE_POINTS, BATCH, ROUNDS = 200_000, 100_000, 512, 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(device: torch.device, x: torch.Tensor) -> vqflows.VQFlow:
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", 32).to(device)
    fit_partition(model, x[:20_000], epochs=5)
    fit_chart_weights(model, x[:20_000])
    return model


def _epoch(model, x, objective: str) -> float:
    """Wall seconds of one epoch, the device synchronised on both sides."""
    _sync(x.device)
    t = time.perf_counter()
    train_flow(model, x, None, epochs=1, batch_size=BATCH, objective=objective, early_stopping=None)
    _sync(x.device)
    return time.perf_counter() - t


def _throughput(model, x) -> float:
    _sync(x.device)
    t = time.perf_counter()
    with torch.inference_mode():
        model.log_prob(x)
    _sync(x.device)
    return x.shape[0] / (time.perf_counter() - t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_beside_cpu(benchmark):
    """Epoch seconds (cells, mixture) and scoring throughput on the CPU and the GPU, and the GPU's speed-ups."""
    torch.set_num_threads(1)
    devices = (torch.device("cpu"), torch.device("cuda"))
    data = vqflows.datasets.get("helix").sample(POINTS, seed=0)
    models = {d: _model(d, data.to(d)) for d in devices}
    rows = {d: {"cells": [], "mixture": [], "score": []} for d in devices}

    def interleaved() -> None:
        for _ in range(ROUNDS):
            for d in devices:
                x = data.to(d)
                rows[d]["cells"].append(_epoch(models[d], x, "cells"))
                rows[d]["mixture"].append(_epoch(models[d], x, "mixture"))
                rows[d]["score"].append(_throughput(models[d], x[:SCORE_POINTS]))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    med = {d.type: {k: statistics.median(v) for k, v in rows[d].items()} for d in devices}
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name(0)
    for dev, figures in med.items():
        benchmark.extra_info.update({f"{dev}_epoch_cells_s": figures["cells"], f"{dev}_epoch_mixture_s": figures["mixture"],
                                     f"{dev}_log_prob_points_per_s": figures["score"]})
    benchmark.extra_info.update(gpu_speedup_epoch=med["cpu"]["cells"] / med["cuda"]["cells"],
                                gpu_speedup_scoring=med["cuda"]["score"] / med["cpu"]["score"])
