"""Timing harness of vqflows (pytest-benchmark): epoch time, log_prob throughput and peak memory, the
chart stage, start-up, and the ratios that matter, with a history across commits. Its sibling modules
(``scaling.py``, ``gpu.py``, ``defaults.py``) are collected with it:

    pip install -e ".[bench]"
    python -m pytest benchmarks --benchmark-autosave                      # run; saves .benchmarks/<machine>/NNNN_<commit>.json
    python -m pytest benchmarks --benchmark-compare                       # run and compare with the last saved run
    python -m pytest benchmarks/timing.py -k startup                      # one module, some timings
    python -m pytest -m slow benchmarks                                   # the long ones (torch.compile, data-parallel)
    python -m pytest -m gpu benchmarks                                    # GPU beside CPU (needs CUDA)
    pytest-benchmark compare --group-by=name                              # the history, side by side

Every figure is measured with one torch thread. Absolute seconds swing by tens of percent on a shared
machine; the ratios (``extra_info``: ``ratio_*``) are measured side by side in one process, interleaved,
as medians of several rounds, and are what to compare between machines. Peak memory is the resident set
of a fresh child process (``extra_info["peak_rss_mb"]``).
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zuko
from torch import nn
from torch.nn import functional as F

import vqflows
from vqflows.training import EarlyStopping, fit_chart_weights, fit_partition

ROOT = Path(__file__).resolve().parent.parent
POINTS = 100_000  # log_prob calls score this many points with K = 32

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def helix():
    return vqflows.datasets.load("helix", n=10_000, seed=0)


def _fitted(splits, charts: int | None = 32) -> vqflows.VQFlow:
    """A model with its charts, weights and frames fitted; the flow is left untrained (speed only)."""
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts)
    if model.partition is not None:
        fit_partition(model, splits.train, seed=0)
    fit_chart_weights(model, splits.train)
    return model.eval()


def _interleaved(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Each contender once per round, in turn; each returns a list of seconds."""
    out: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            out[name] += fn()
    return out


def _epochs(splits, charts: int | None, epochs: int = 4, **options) -> list[float]:
    """Seconds per epoch of the default training (the first epoch pays one-off costs and is left out)."""
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts)
    history = vqflows.fit(model, splits.train, splits.val, epochs=epochs, seed=0,
                          early_stopping=EarlyStopping(patience=epochs + 1), **options)
    return history.epoch_seconds[1:]


@pytest.mark.parametrize("charts", [32, None], ids=["vq-maf", "maf"])
def test_epoch(benchmark, helix, charts):
    """One default training epoch (5,000 helix points, batch 512, early-stopping check included)."""
    seconds = benchmark.pedantic(lambda: _epochs(helix, charts, epochs=3), rounds=3, iterations=1)
    benchmark.extra_info["epoch_s"] = statistics.median(seconds)


def test_epoch_ratio(benchmark, helix):
    """vq-maf epoch / maf epoch under the default objective, interleaved in one process."""
    t = benchmark.pedantic(lambda: _interleaved({"vq": lambda: _epochs(helix, 32), "plain": lambda: _epochs(helix, None)}, 2),
                           rounds=1, iterations=1)
    benchmark.extra_info["ratio_vq_maf_to_maf"] = statistics.median(t["vq"]) / statistics.median(t["plain"])


@pytest.mark.slow  # minutes of compiling on a CPU: python -m pytest -m slow benchmarks/timing.py -k compile
def test_compiled_epoch_ratio(benchmark, helix):
    """``torch.compile`` of the loss (opt-in) against eager: later epochs compiled / eager, and the first
    compiled epoch (it includes compiling; a second run of the harness sees a warm cache)."""
    first: list[float] = []

    def compiled() -> list[float]:
        torch.manual_seed(0)
        model = vqflows.build(3, "maf", 32)
        history = vqflows.fit(model, helix.train, helix.val, epochs=6, seed=0, compile=True,
                                    early_stopping=EarlyStopping(patience=7))
        first.append(history.epoch_seconds[0])
        return history.epoch_seconds[2:]

    t = benchmark.pedantic(lambda: _interleaved({"eager": lambda: _epochs(helix, 32, 6)[1:], "compiled": compiled}, 1),
                           rounds=1, iterations=1)
    benchmark.extra_info["ratio_compiled_to_eager_epoch"] = statistics.median(t["compiled"]) / statistics.median(t["eager"])
    benchmark.extra_info["first_compiled_epoch_s"] = first[0]


@pytest.mark.parametrize("chunk", [2048, 8192, 65536])
def test_log_prob_throughput(benchmark, helix, chunk):
    """``model.log_prob`` on 100,000 points with K = 32, as a fitted model is called (``eval()``), by the
    number of flattened (point, chart) rows scored at once (the default is 8,192)."""
    model = _fitted(helix)
    x = vqflows.datasets.get("helix").sample(POINTS, seed=1).float()
    benchmark.pedantic(lambda: model.log_prob(x, chunk=chunk), rounds=3, iterations=1)
    benchmark.extra_info["points_per_s"] = POINTS / benchmark.stats.stats.median
    if chunk == vqflows.model.CHUNK:
        benchmark.extra_info.update(_child("log_prob"))


def test_chart_stage(benchmark, helix):
    """The chart stage (VQ-AE + weights and frames, K = 32) on 100,000 points, and its cost in flow epochs."""
    x = vqflows.datasets.get("helix").sample(POINTS, seed=0).float()

    def stage():
        torch.manual_seed(0)
        model = vqflows.build(3, "maf", 32)
        fit_partition(model, x, seed=0)
        fit_chart_weights(model, x)

    benchmark.pedantic(stage, rounds=2, iterations=1)
    epoch = statistics.median(_epochs(helix, 32)) * POINTS / len(helix.train)
    benchmark.extra_info["ratio_chart_stage_to_flow_epoch"] = benchmark.stats.stats.median / epoch


@pytest.mark.parametrize("command", [["-c", "import vqflows"], ["-m", "vqflows", "--help"],
                                     ["-m", "vqflows", "train", "--model", "no-such-model"],
                                     ["-m", "vqflows", "train", "--set", "charts=many"],
                                     ["-m", "vqflows", "datasets"]],
                         ids=["import", "help", "usage-error", "settings-error", "datasets"])
def test_startup(benchmark, command):
    """Wall time of a fresh interpreter: ``import vqflows``, ``vqflows --help``, a usage error, a bad
    ``--set`` setting (both answered before torch is imported; target < 1 s) and ``vqflows datasets``
    (stored summaries; target < 2 s)."""
    run = lambda: subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, check=False)
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info["median_s"] = benchmark.stats.stats.median


def test_fit_path_against_the_command_line(benchmark, tmp_path):
    """Training seconds of ``vqflows.fit`` as in the README against ``vqflows train`` on the same single model
    (the VQ-AE partition: ``vqflows.build``'s; the command line's default stacks several), 10 epochs, helix."""
    code = ("import json, sys, torch, vqflows; from vqflows.training import EarlyStopping; "
            "s = vqflows.datasets.load('helix', n=10_000, seed=0); torch.manual_seed(0); m = vqflows.build(3, 'maf', 32); "
            "h = vqflows.fit(m, s.train, s.val, epochs=10, early_stopping=EarlyStopping(patience=11)); "
            "print(json.dumps(h.train_seconds))")

    def api() -> list[float]:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        return [float(out.stdout.strip().splitlines()[-1])]

    def cli() -> list[float]:
        run = tmp_path / f"run-{time.monotonic_ns()}"
        subprocess.run([sys.executable, "-m", "vqflows", "train", "--dataset", "helix", "--model", "vq-maf", "--epochs",
                        "10", "--quiet", "--set", "patience=11", "partition=vqae", "--out", str(run)], cwd=ROOT, capture_output=True,
                       check=True)
        return [json.loads((run / "metrics.json").read_text())["train_seconds"]]

    t = benchmark.pedantic(lambda: _interleaved({"api": api, "cli": cli}, 2), rounds=1, iterations=1)
    benchmark.extra_info["ratio_cli_to_fit"] = statistics.median(t["cli"]) / statistics.median(t["api"])


# ------------------------------------------------------------------ a hand-written conditional MAF (the floor)
class _MADE(nn.Module):
    """Masked conditioner: ``(x, c) -> (a, b)`` with output ``i`` depending on inputs before ``i`` in ``order``."""

    def __init__(self, features: int, context: int, hidden: tuple[int, ...], reverse: bool) -> None:
        super().__init__()
        order = torch.arange(features).flip(0) if reverse else torch.arange(features)
        degrees = torch.cat([order, torch.full((context,), -1)])
        sizes = [features + context, *hidden, 2 * features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            d = order.repeat(2) if last else torch.arange(layer.out_features) % max(features - 1, 1)
            self.register_buffer(f"mask{i}", (d[:, None] > degrees[None, :] if last else d[:, None] >= degrees[None, :]).float())
            degrees = d

    def forward(self, h):
        for i, layer in enumerate(self.layers):
            h = F.linear(h, layer.weight * getattr(self, f"mask{i}"), layer.bias)
            h = F.relu(h) if i < len(self.layers) - 1 else h
        return h


class HandMAF(nn.Module):
    """A lean conditional MAF, the speed floor: MADE conditioners (ReLU), affine steps ``z = x·exp(a) + b``
    with zuko's soft clip of ``a``, alternating orders, standard normal base."""

    def __init__(self, features: int, context: int = 0, transforms: int = 5, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.features, self.clip = features, -math.log(1e-3)
        self.mades = nn.ModuleList(_MADE(features, context, hidden, reverse=bool(t % 2)) for t in range(transforms))

    def log_prob(self, x, c=None):
        ladj = 0.0
        for made in self.mades:
            a, b = made(x if c is None else torch.cat([x, c], -1)).chunk(2, -1)
            a = a / (1 + a.abs() / self.clip)
            x = x * a.exp() + b
            ladj = ladj + a.sum(-1)
        return ladj - 0.5 * (x.square().sum(-1) + self.features * math.log(2 * math.pi))


def _step_epoch(params, loss_fn, n: int, batch: int = 128):
    """An epoch of Adam steps over ``n`` points in batches of ``batch``: returns a function timing one."""
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def epoch() -> list[float]:
        t = time.perf_counter()
        for idx in torch.randperm(n, generator=gen).split(batch):
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return [time.perf_counter() - t]
    return epoch


def test_flow_steps_against_zuko_and_a_hand_written_maf(benchmark, helix):
    """Training steps alone (batch 128, 5,000 points): vqflows maf and vq-maf (each point in its chart)
    against zuko's MAF and the hand-written floor, interleaved."""
    x, contenders = helix.train, {}
    for name, charts in (("maf", None), ("vq-maf", 32)):
        model = _fitted(helix, charts).train()
        k = model.top_charts(x, 1)[:, 0]
        params = [p for p in model.flow.parameters() if p.requires_grad]
        contenders[name] = _step_epoch(params, lambda i, m=model, k=k: vqflows.training.cell_loss(m, x[i], k[i]).mean(),
                                       len(x))
    torch.manual_seed(0)
    zmaf = zuko.flows.MAF(3, 0, transforms=5, hidden_features=(64, 64))
    contenders["zuko"] = _step_epoch(zmaf.parameters(), lambda i: -zmaf().log_prob(x[i]).mean(), len(x))
    torch.manual_seed(0)
    hmaf = HandMAF(3)
    contenders["hand"] = _step_epoch(hmaf.parameters(), lambda i: -hmaf.log_prob(x[i]).mean(), len(x))
    t = benchmark.pedantic(lambda: _interleaved(contenders, 5), rounds=1, iterations=1)
    m = {k: statistics.median(v) for k, v in t.items()}
    benchmark.extra_info.update(ratio_maf_to_hand_written=m["maf"] / m["hand"], ratio_zuko_to_hand_written=m["zuko"] / m["hand"],
                                ratio_vq_maf_to_maf_steps=m["vq-maf"] / m["maf"])


# -------------------------------------------------------------------- measurements in a fresh process
def _child(what: str) -> dict:
    out = subprocess.run([sys.executable, __file__, what], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _log_prob_peak() -> dict:
    """Peak resident memory of one ``log_prob`` call on 100,000 points (fitted K = 32 model, eval mode)."""
    model = _fitted(vqflows.datasets.load("helix", n=10_000, seed=0))
    x = vqflows.datasets.get("helix").sample(POINTS, seed=1).float()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.log_prob(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": peak / 1024, "rss_mb_in_call": (peak - before) / 1024}


if __name__ == "__main__":
    print(json.dumps({"log_prob": _log_prob_peak}[sys.argv[1]]()))
