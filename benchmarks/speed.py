"""Speed of vqflows against fixed targets, every row measured in one run, side by side with the figures
it replaces ("today") and the goal ("target").

    python benchmarks/speed.py [--quick] [--full-grid] [--rows grid,ratio,flows,logprob,chunks,charts,cli]
                               [--graph-points N] [--json F]

Rows:
  grid     the paper grid (`vqflows benchmark --table 1 --table 2`, 180 trainings, 2 jobs): estimated from one
           training per model on helix (x 6 sets x 5 trials / 2 jobs); `--full-grid` runs the real grid instead.
  ratio    vq-maf epoch / maf epoch under `vqflows.fit` (default objective), beside the exact 512-point mixture
           check that early stopping runs every epoch.
  flows    one epoch of training steps (batch 128, helix 5,000 points) of vqflows maf, vqflows vq-maf (hard cells),
           zuko's MAF and a hand-written conditional MAF (the floor; defined here, nowhere else).
  logprob  `model.log_prob` on 100,000 points, K = 32: peak RSS and throughput, as the README calls it, under
           `torch.no_grad()` and under `torch.inference_mode()`, each in its own process. If the default call
           keeps a graph it needs about 160 kB per point: lower `--graph-points` on a small machine.
  chunks   mixture throughput (`model.log_prob(x, chunk=c)`) for chunk sizes 1,024..65,536 flattened rows.
  charts   chart stage (fit_charts + fit_weights) on 1e6 points against one flow epoch on 1e6 points
           (extrapolated from timed steps), in its own process.
  cli      wall time of `python -m vqflows --help` and of `import vqflows`, median of 5.

Alternatives inside a row run in interleaved rounds; figures are medians (min in brackets), one torch thread.
`--quick` shrinks every row (fewer rounds and points; the grid estimate then bounds each training by 100 epochs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # measure this checkout's vqflows, not an installed one
    sys.path.insert(0, str(ROOT))

ROWS = ("grid", "ratio", "flows", "logprob", "chunks", "charts", "cli")
CHUNKS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
PAPER_GRID_TRAININGS = 6 * 6 * 5  # sets x models x trials


@dataclass
class Row:
    name: str
    today: str
    target: str
    measured: str
    detail: str = ""


def med(xs) -> str:
    """``median (min)`` of seconds, in ms."""
    return f"{statistics.median(xs) * 1e3:.1f} ({min(xs) * 1e3:.1f}) ms"


def rounds(contenders: dict, n: int) -> dict[str, list[float]]:
    """Call each contender once per round, in turn, ``n`` rounds; each returns seconds (or a list of them)."""
    out: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(n):
        for name, fn in contenders.items():
            t = fn()
            out[name] += t if isinstance(t, list) else [t]
    return out


def _adam(params):
    import torch

    try:
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=1e-3)


def _prepare_charts(model, x) -> None:
    """Stages 1-2 (charts, weights, frames) on ``x``; a one-epoch ``vqflows.fit`` where the model lacks them."""
    import vqflows

    if hasattr(model, "fit_charts") and hasattr(model, "fit_weights"):
        model.fit_charts(x, seed=0)
        model.fit_weights(x)
    else:
        vqflows.fit(model, x, epochs=1, seed=0)


def _hard_charts(model, x):
    """Each point's nearest chart ``(N,)``."""
    import torch

    with torch.no_grad():
        if hasattr(model, "assign"):
            return model.assign(x)
        return model.chart_log_prob(x).argmax(-1)


def _hard_loss(model, x, k):
    """Mean ``-log p(x | k)`` of points in their own charts: the per-point work of one training step."""
    if hasattr(model, "loss"):
        return model.loss(x, k).mean()
    return -model._chart_log_prob(x, k).mean()


def _fitted_vq_model(charts: int | None = 32):
    """A vq-maf (or maf) on helix with fitted charts and frames; the flow is left untrained (speed only)."""
    import torch

    import vqflows

    splits = vqflows.datasets.load("helix", seed=0)
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts)
    _prepare_charts(model, splits.train)
    return model.eval(), splits


# ------------------------------------------------------------------ a hand-written conditional MAF (the floor)
def hand_maf(features: int, context: int = 0, transforms: int = 5, hidden: tuple[int, ...] = (64, 64)):
    """A lean conditional MAF: MADE conditioners (ReLU), affine steps ``z = x·exp(a) + b`` with the same soft
    clip of ``a`` as zuko, alternating orders, standard normal base. Returns a module with ``log_prob(x, c)``."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class MADE(nn.Module):
        def __init__(self, reverse: bool) -> None:
            super().__init__()
            order = torch.arange(features).flip(0) if reverse else torch.arange(features)
            degrees = [torch.cat([order, torch.full((context,), -1)])]
            sizes = [features + context, *hidden]
            self.weights, self.biases, masks = nn.ParameterList(), nn.ParameterList(), []
            for i, width in enumerate([*hidden, 2 * features]):
                if i < len(hidden):
                    d = torch.arange(width) % max(features - 1, 1)
                    mask = d[:, None] >= degrees[-1][None, :]
                else:
                    d = order.repeat(2)
                    mask = d[:, None] > degrees[-1][None, :]
                degrees.append(d)
                layer = nn.Linear(sizes[i], width)
                self.weights.append(layer.weight)
                self.biases.append(layer.bias)
                masks.append(mask.float())
            for i, m in enumerate(masks):
                self.register_buffer(f"mask{i}", m)

        def forward(self, h):
            n = len(self.weights)
            for i in range(n):
                h = F.linear(h, self.weights[i] * getattr(self, f"mask{i}"), self.biases[i])
                if i < n - 1:
                    h = F.relu(h)
            return h

    class HandMAF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mades = nn.ModuleList(MADE(reverse=bool(t % 2)) for t in range(transforms))
            self.clip = -math.log(1e-3)

        def log_prob(self, x, c=None):
            ladj = 0.0
            for made in self.mades:
                a, b = made(x if c is None else torch.cat([x, c], -1)).chunk(2, -1)
                a = a / (1 + a.abs() / self.clip)
                x = x * a.exp() + b
                ladj = ladj + a.sum(-1)
            return ladj - 0.5 * (x.square().sum(-1) + features * math.log(2 * math.pi))

    return HandMAF()


# -------------------------------------------------------------------------------------------------- rows
def row_cli(quick: bool) -> list[Row]:
    def wall(cmd) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - t

    cmds = {"help": [sys.executable, "-m", "vqflows", "--help"],
            "import": [sys.executable, "-c", "import vqflows"],
            "import+model": [sys.executable, "-c", "import vqflows; vqflows.VQFlow"]}
    t = rounds({k: (lambda c=c: wall(c)) for k, c in cmds.items()}, 5)
    return [Row("`python -m vqflows --help` (wall)", "2.5 s of imports", "< 1 s",
                f"{statistics.median(t['help']):.2f} s", f"min {min(t['help']):.2f} s, median of 5"),
            Row("  `import vqflows` / + `vqflows.VQFlow`", "", "",
                f"{statistics.median(t['import']):.2f} / {statistics.median(t['import+model']):.2f} s",
                "the second loads torch, zuko and the model")]


def row_flows(quick: bool) -> list[Row]:
    import torch
    import zuko

    import vqflows

    splits = vqflows.datasets.load("helix", seed=0)
    x = splits.train
    n = x.shape[0]
    contenders = {}

    def make_epoch(params, loss_fn):
        opt = _adam(params)
        gen = torch.Generator().manual_seed(0)

        def epoch() -> float:
            t = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, 128):
                idx = perm[i:i + 128]
                loss = loss_fn(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return time.perf_counter() - t
        return epoch

    for name, charts in (("vqflows maf", None), ("vqflows vq-maf (hard cells)", 32)):
        torch.manual_seed(0)
        model = vqflows.build(3, "maf", charts)
        _prepare_charts(model, x)
        k = _hard_charts(model, x)
        params = [p for p in model.flow.parameters() if p.requires_grad]
        contenders[name] = make_epoch(params, lambda idx, m=model, k=k: _hard_loss(m, x[idx], k[idx]))
    torch.manual_seed(0)
    zmaf = zuko.flows.MAF(3, 0, transforms=5, hidden_features=(64, 64))
    contenders["zuko MAF"] = make_epoch(zmaf.parameters(), lambda idx: -zmaf().log_prob(x[idx]).mean())
    torch.manual_seed(0)
    hmaf = hand_maf(3)
    contenders["hand-written MAF"] = make_epoch(hmaf.parameters(), lambda idx: -hmaf.log_prob(x[idx]).mean())
    for fn in contenders.values():  # warm-up epoch
        fn()
    t = rounds(contenders, 3 if quick else 7)
    m = {k: statistics.median(v) for k, v in t.items()}
    floor = m["hand-written MAF"]
    return [Row("flow epoch: vqflows maf / zuko MAF / hand-written MAF", "106 / 104 / 80 ms",
                "vqflows ≤ 1.10× hand-written",
                f"{m['vqflows maf'] * 1e3:.0f} / {m['zuko MAF'] * 1e3:.0f} / {floor * 1e3:.0f} ms "
                f"({m['vqflows maf'] / floor:.2f}×)",
                "steps only, batch 128, 5,000 points; " + "; ".join(f"{k} {med(v)}" for k, v in t.items())),
            Row("  steps alone: vq-maf (hard cells) / maf", "1.15", "",
                f"{m['vqflows vq-maf (hard cells)'] / m['vqflows maf']:.2f}", "same loop, same objective")]


def row_ratio(quick: bool) -> list[Row]:
    import torch

    import vqflows
    from vqflows.training import CHECK_TOP

    splits = vqflows.datasets.load("helix", seed=0)
    epochs = 4 if quick else 10
    models = {}

    def run(charts, objective):
        def go() -> list[float]:
            torch.manual_seed(0)
            model = vqflows.build(3, "maf", charts)
            h = vqflows.fit(model, splits.train, splits.val, epochs=epochs, patience=epochs + 1, seed=0,
                            objective=objective)
            models[charts] = model
            return h.epoch_seconds[1:]  # the first epoch pays one-off costs
        return go

    t = rounds({"maf": run(None, "cells"), "vq-maf cells": run(32, "cells"), "vq-maf mixture": run(32, "mixture")},
               2 if quick else 3)
    val = splits.val[torch.randperm(len(splits.val), generator=torch.Generator().manual_seed(0))[:512]]
    model = models[32]
    exact, bound = [], []
    with torch.no_grad():
        for _ in range(5 if quick else 15):
            s = time.perf_counter()
            model.log_prob(val)
            exact.append(time.perf_counter() - s)
            s = time.perf_counter()
            model.log_prob(val, "top", top=CHECK_TOP)
            bound.append(time.perf_counter() - s)
    maf = statistics.median(t["maf"])
    cells, mixture = statistics.median(t["vq-maf cells"]), statistics.median(t["vq-maf mixture"])
    return [Row("vq-maf epoch / maf epoch, same objective (each point in its chart), with the early-stopping check",
                "1.49 (1.31); check 37 ms of a 161 ms epoch", "≤ 1.10",
                f"{cells / maf:.2f} ({min(t['vq-maf cells']) / min(t['maf']):.2f})",
                f"maf {med(t['maf'])}, vq-maf {med(t['vq-maf cells'])} (batch 512); the check: exact 512-point "
                f"mixture {med(exact)}, the default top-{CHECK_TOP} bound {med(bound)}"),
            Row("  the default mixture objective (top-4): vq-maf epoch / maf epoch", "", "(reported)",
                f"{mixture / maf:.2f}; {mixture / cells:.2f}× the hard-cell vq-maf epoch",
                f"vq-maf mixture {med(t['vq-maf mixture'])}")]


def _logprob_child(mode: str, points: int) -> dict:
    import torch

    import vqflows

    torch.set_num_threads(1)
    model, _ = _fitted_vq_model(32)
    x = vqflows.datasets.get("helix").sample(points, seed=1).to(torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = {"default": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    t = time.perf_counter()
    with ctx():
        lp = model.log_prob(x)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "points": points, "seconds": seconds, "points_per_s": points / seconds,
            "peak_rss_mb": peak / 1024, "before_call_rss_mb": base / 1024, "keeps_graph": lp.grad_fn is not None}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def row_logprob(quick: bool, graph_points: int | None = None) -> list[Row]:
    points = 100_000
    if graph_points is None:  # the graph-keeping call took 15.8 GB at 100,000 points
        graph_points = 10_000 if quick else points
    res = {m: _child(["logprob", m, str(graph_points if m == "default" else points)])
           for m in ("default", "no_grad", "inference_mode")}

    def show(r):
        if "error" in r:
            return "failed: " + r["error"]
        return (f"{r['peak_rss_mb']:.0f} MB peak ({r['peak_rss_mb'] - r['before_call_rss_mb']:.0f} MB in the call), "
                f"{r['points_per_s']:,.0f} pts/s" + (", graph kept" if r["keeps_graph"] else ""))

    d = res["default"]
    note = "" if graph_points == points else f" (at {graph_points:,} points)"
    rows = [Row("`model.log_prob(x)` on 100,000 points, K = 32, default call" + note,
                "15.8 GB peak, 39.5 s (graph kept)", "≤ 1 GB peak", show(d))]
    base = 100_000 / 8.5
    for m in ("no_grad", "inference_mode"):
        r = res[m]
        speed = "" if "error" in r else f"; {r['points_per_s'] / base:.2f}× today's no_grad throughput"
        rows.append(Row(f"  same under torch.{m}", "654 MB / 8.5 s" if m == "no_grad" else "",
                        "≥ 2× today's no_grad throughput", show(r) + speed))
    return rows


def row_chunks(quick: bool) -> list[Row]:
    import torch

    import vqflows

    model, _ = _fitted_vq_model(32)
    n = 20_000 if quick else 100_000
    x = vqflows.datasets.get("helix").sample(n, seed=1).to(torch.float32)
    faults: dict[int, list[int]] = {c: [] for c in CHUNKS}

    def call(c):
        def go() -> float:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            with torch.no_grad():
                model.log_prob(x, chunk=c)
            s = time.perf_counter() - t
            faults[c].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            return s
        return go

    t = rounds({c: call(c) for c in CHUNKS}, 2 if quick else 3)
    rate = {c: n * model.K / statistics.median(v) for c, v in t.items()}
    best = max(rate, key=rate.get)
    sweep = ", ".join(f"{c}: {rate[c] / 1e6:.2f} M rows/s ({statistics.median(faults[c]) / 1e3:.0f}k faults)"
                      for c in CHUNKS)
    return [Row(f"mixture throughput vs chunk (K = 32, N = {n:,}, no_grad)",
                "65,536-row chunks: 1.9 M page faults; 8,192 rows 2.4× faster", "chunk chosen by measurement",
                f"best {best} rows: {rate[best] / rate[65536]:.2f}× the 65,536-row chunk", sweep)]


def _charts_child(points: int, steps: int) -> dict:
    import torch

    import vqflows

    torch.set_num_threads(1)
    t = time.perf_counter()
    import torch._dynamo  # (what the first torch.optim optimizer would import inside the timing)
    dynamo = time.perf_counter() - t
    x = vqflows.datasets.get("helix").sample(points, seed=0).to(torch.float32)
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", 32)
    if not (hasattr(model, "fit_charts") and hasattr(model, "fit_weights")):  # only whole trainings: one epoch
        h = vqflows.fit(model, x, epochs=1, seed=0)
        return {"points": points, "dynamo_import_s": dynamo, "fit_charts_s": h.chart_seconds, "fit_weights_s": 0.0,
                "chart_stage_s": h.chart_seconds, "flow_epoch_s": h.epoch_seconds[0], "steps_timed": 0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    t = time.perf_counter()
    model.fit_charts(x, seed=0)
    charts = time.perf_counter() - t
    t = time.perf_counter()
    model.fit_weights(x)
    weights = time.perf_counter() - t
    k = _hard_charts(model, x)
    opt = _adam([p for p in model.flow.parameters() if p.requires_grad])
    gen = torch.Generator().manual_seed(0)
    times = []
    for s in range(steps + 20):
        idx = torch.randint(points, (128,), generator=gen)
        t = time.perf_counter()
        loss = _hard_loss(model, x[idx], k[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s >= 20:
            times.append(time.perf_counter() - t)
    epoch = statistics.median(times) * math.ceil(points / 128)
    return {"points": points, "dynamo_import_s": dynamo, "fit_charts_s": charts, "fit_weights_s": weights,
            "chart_stage_s": charts + weights, "flow_epoch_s": epoch, "steps_timed": steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def row_charts(quick: bool) -> list[Row]:
    r = _child(["charts", str(1_000_000), str(300 if quick else 1500)])
    if "error" in r:
        return [Row("chart stage at 1e6 points", "183 s, 8.6 flow epochs", "≤ 2 flow epochs", "failed: " + r["error"])]
    return [Row("chart stage (VQ-AE + weights/frames) at 1e6 points", "183 s, as much as 8.6 flow epochs",
                "≤ 2 flow epochs",
                f"{r['chart_stage_s']:.1f} s = {r['chart_stage_s'] / r['flow_epoch_s']:.2f} flow epochs",
                f"fit_charts {r['fit_charts_s']:.1f} s + fit_weights {r['fit_weights_s']:.1f} s; flow epoch "
                f"{r['flow_epoch_s']:.1f} s (median of {r['steps_timed']} steps × 7,813); peak RSS "
                f"{r['peak_rss_mb']:.0f} MB; torch._dynamo import (first optimizer) {r['dynamo_import_s']:.2f} s, "
                f"outside the timing")]


def row_grid(quick: bool, full_grid: bool) -> list[Row]:
    if full_grid:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vqflows", "benchmark", "--table", "1", "--table", "2",
                            "--jobs", "2", "--out", d, "--quiet", "--no-figures"], cwd=ROOT, check=True)
            wall = time.perf_counter() - t
        return [Row("full `vqflows benchmark --table 1 --table 2` (180 trainings, --jobs 2)", "42.5 min",
                    "< 20 min", f"{wall / 60:.1f} min", "measured")]
    from vqflows.experiments.tables import PAPER_MODELS
    from vqflows.runs import RunConfig, train_run

    per, detail = {}, []
    with tempfile.TemporaryDirectory() as d:
        for m in PAPER_MODELS:
            config = RunConfig(dataset="helix", model=m, seed=0)
            if quick:
                config = config.with_overrides({"epochs": 3, "patience": 4})
            t = time.perf_counter()
            r = train_run(config, Path(d) / m)
            wall = time.perf_counter() - t
            if quick:  # bound: every training runs to the 100-epoch cap
                wall += (RunConfig().epochs - r["epochs"]) * r["flow_seconds_per_epoch"]
            per[m] = wall
            detail.append(f"{m} {wall:.0f} s/{r['epochs']} ep")
    est = sum(per.values()) * PAPER_GRID_TRAININGS / len(PAPER_MODELS) / 2
    how = "bound: 100 epochs each, " if quick else ""
    return [Row("full `vqflows benchmark --table 1 --table 2` (180 trainings, --jobs 2)", "42.5 min", "< 20 min",
                f"≈ {est / 60:.1f} min (estimate)",
                how + "one helix training per model × 30 / 2 jobs: " + ", ".join(detail))]


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and points; a bound for the grid")
    p.add_argument("--full-grid", action="store_true", help="run the real paper grid (about 20-45 min)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--graph-points", type=int, default=None,
                   help="points for the default (graph-keeping) log_prob call (default 100,000; --quick 10,000)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(1)
        kind, *rest = args.child
        out = _logprob_child(rest[0], int(rest[1])) if kind == "logprob" else _charts_child(int(rest[0]), int(rest[1]))
        print(json.dumps(out))
        return 0
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows_wanted) - set(ROWS))
    if unknown:
        p.error(f"--rows: expected names among {','.join(ROWS)}, got {','.join(unknown)}")
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # children too
    makers = {"grid": lambda: row_grid(args.quick, args.full_grid), "ratio": lambda: row_ratio(args.quick),
              "flows": lambda: row_flows(args.quick), "logprob": lambda: row_logprob(args.quick, args.graph_points),
              "chunks": lambda: row_chunks(args.quick), "charts": lambda: row_charts(args.quick),
              "cli": lambda: row_cli(args.quick)}
    rows: list[Row] = []
    load0 = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), _cpu_seconds()

    for name in ROWS:
        if name in rows_wanted:
            t = time.perf_counter()
            rows += makers[name]()
            print(f"[{name}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    busy = (_cpu_seconds() - cpu0) / wall
    print(f"# vqflows speed — {'quick, ' if args.quick else ''}1 torch thread, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {wall:.0f} s; load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}; on CPU {busy:.0%} of the wall time"
          + (" (a busy machine: times inflated)" if busy < 0.9 else ""))
    print("| row | today | target | measured |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.today} | {r.target} | {r.measured} |")
    details = [r for r in rows if r.detail]
    if details:
        print()
        for r in details:
            print(f"- {r.name.strip()}: {r.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
