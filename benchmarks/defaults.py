"""The defaults sweep: VQ-MAF on the six 3-D sets under several training objectives and batch sizes.

    python benchmarks/defaults.py run --out DIR [--arms essential|secondary|NAME,...] [--seeds 0,1,2] [--jobs 2]
    python benchmarks/defaults.py report --out DIR            # tables from DIR/results.jsonl
    python benchmarks/defaults.py purity [--charts 4,8,16,32] # cell purity of VQ-AE and k-means partitions alone
    python -m pytest benchmarks/defaults.py                   # per-epoch cost of the arms and of the check (harness)

Each training is one job (arm × dataset × seed) in a process pool with one torch thread per worker;
finished jobs are appended to ``DIR/results.jsonl`` and skipped when the command is run again.
Per job: the test gap to the oracle, the top-m scoring lower bound's gap to the full mixture, epochs,
seconds per flow epoch, chart-cell purity, and per epoch the exact early-stopping score beside the
top-T bounds (T = 1, 2, 4, 8) on the same 512 validation points, so that any early-stopping rule built
on them can be replayed offline against the exact one.

The costs are timings of the harness (pytest-benchmark, collected with the rest of ``benchmarks/``):
``test_objective_epochs`` interleaves the arms' epochs in one process (with the exact check, and the
steps alone) and reports each arm's ratio to ``cells-b128``; ``test_early_stopping_check`` times the
check alone on 512 validation points, exact against the top-4 and top-8 bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one

import pytest
import torch

from vqflows.training import fit_chart_weights, fit_partition

SETS = ("spherical", "helix", "lissajous", "knotted", "twisted-eight", "interlocked-circles")
BOUND_TOPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Arm:
    objective: str = "cells"
    top: int = 4
    learn_weights: bool = True
    partition: str = "vqae"
    batch_size: int = 128
    lr: float = 1e-3
    charts: int = 32
    frames: str = "hard"  # "hard" or "soft": frames/weights from responsibility-weighted points
    patience: int = 10


ARMS = {
    # essential: 3 seeds
    "cells-b128": Arm("cells"),
    "mix4-b128": Arm("mixture", 4),
    "mix4-b512": Arm("mixture", 4, batch_size=512, lr=2e-3),
    "cells-b512": Arm("cells", batch_size=512, lr=2e-3),
    # secondary: 1 seed unless asked
    "mix1-b512": Arm("mixture", 1, batch_size=512, lr=2e-3),
    "mix2-b512": Arm("mixture", 2, batch_size=512, lr=2e-3),
    "mixK-b512": Arm("mixture", 32, batch_size=512, lr=2e-3),
    "mix4fixed-b512": Arm("mixture", 4, learn_weights=False, batch_size=512, lr=2e-3),
    "kmeans-cells-b128": Arm("cells", partition="kmeans"),
    "kmeans-mix4-b512": Arm("mixture", 4, partition="kmeans", batch_size=512, lr=2e-3),
    "mix4-b512-soft": Arm("mixture", 4, batch_size=512, lr=2e-3, frames="soft"),
    "mix4-b512-K16": Arm("mixture", 4, batch_size=512, lr=2e-3, charts=16),
    "mix4-b512-K64": Arm("mixture", 4, batch_size=512, lr=2e-3, charts=64),
    "mix4-b256": Arm("mixture", 4, batch_size=256, lr=1.5e-3),
    "mix4-b512-p20": Arm("mixture", 4, batch_size=512, lr=2e-3, patience=20),
    "mix2-b256": Arm("mixture", 2, batch_size=256, lr=1.5e-3),
    "mix4-b512-lr3": Arm("mixture", 4, batch_size=512, lr=3e-3),
    "mix4-b512-K8": Arm("mixture", 4, batch_size=512, lr=2e-3, charts=8),
    "cells-b128-K16": Arm("cells", charts=16),
}
ESSENTIAL = ("cells-b128", "mix4-b128", "mix4-b512", "cells-b512")
SECONDARY = ("mix1-b512", "mix2-b512", "mix4fixed-b512", "kmeans-cells-b128", "kmeans-mix4-b512", "mixK-b512")


def _val_subset(val: torch.Tensor, points: int, seed: int) -> torch.Tensor:
    """The fixed validation subset that :func:`vqflows.fit`'s early stopping scores (same draw)."""
    if val.shape[0] <= points:
        return val
    return val[torch.randperm(val.shape[0], generator=torch.Generator().manual_seed(seed))[:points]]


@torch.no_grad()
def top_bounds(model, x: torch.Tensor, tops=BOUND_TOPS) -> tuple[float, dict[int, float]]:
    """Mean exact mixture log-likelihood of ``x`` and the mean top-T lower bounds, from one all-charts pass."""
    joint = model.chart_log_prob(x) + model.log_weights  # (N, K)
    order = model.chart_distances(x).argsort(-1)
    exact = float(torch.logsumexp(joint, -1).mean())
    return exact, {t: float(torch.logsumexp(joint.gather(1, order[:, :min(t, model.K)]), -1).mean()) for t in tops}


@torch.no_grad()
def cell_purity(model, x: torch.Tensor, k_nn: int = 10, share: float = 0.05) -> dict[str, float]:
    """Fraction of cells whose points fall into two or more separate pieces of the data.

    A cell's points are joined by their symmetric k-nearest-neighbour graph (k = 10, within the cell);
    a cell is *mixed* when at least two connected components each hold ≥ 5% of its points — e.g. two
    turns of a helix or two linked circles in one cell.
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import kneighbors_graph

    cells = model.assign(x)
    mixed, counted, mixed_points = 0, 0, 0
    for k in cells.unique():
        pts = x[cells == k].double().numpy()
        if len(pts) < 2 * k_nn:
            continue
        counted += 1
        graph = kneighbors_graph(pts, k_nn, include_self=False)
        _, labels = connected_components(graph + graph.T, directed=False)
        sizes = torch.bincount(torch.as_tensor(labels))
        if int((sizes >= share * len(pts)).sum()) >= 2:
            mixed += 1
            mixed_points += len(pts)
    return {"mixed_cells": mixed / max(counted, 1), "mixed_points": mixed_points / len(x), "cells_counted": counted}


def train_one(arm_name: str, dataset: str, seed: int) -> dict:
    """One training of VQ-MAF under ``arm_name``; returns its record."""
    torch.set_num_threads(1)
    import vqflows
    from vqflows.runs import evaluate
    from vqflows.training import EarlyStopping

    arm = ARMS[arm_name]
    splits = vqflows.datasets.load(dataset, seed=seed)
    torch.manual_seed(seed)
    model = vqflows.build(3, "maf", charts=arm.charts, partition=arm.partition)
    val_es = _val_subset(splits.val, 512, seed)
    trace: list[dict] = []

    def record(epoch, m, history):
        exact, bounds = top_bounds(m, val_es)
        trace.append({"epoch": epoch, "exact": exact, **{f"top{t}": b for t, b in bounds.items()}})

    extra = {"membership": "soft"} if arm.frames == "soft" else {}
    t0 = time.perf_counter()
    history = vqflows.fit(model, splits.train, splits.val, objective=arm.objective, top=arm.top,
                          learn_weights=arm.learn_weights, batch_size=arm.batch_size, lr=arm.lr, seed=seed,
                          early_stopping=EarlyStopping(arm.patience, 512, top=None), callbacks=[record], threads=1,
                          **extra)
    wall = time.perf_counter() - t0
    metrics = evaluate(model, splits)
    test = splits.test
    with torch.no_grad():
        exact_test, bounds_test = top_bounds(model, test)
    return {
        "arm": arm_name, "dataset": dataset, "seed": seed, **arm.__dict__,
        "test_ll": metrics["test_log_likelihood"], "oracle": metrics["oracle_log_likelihood"],
        "gap": metrics["gap_to_oracle"], "test_top_bounds": bounds_test, "test_exact": exact_test,
        "epochs": history.epochs, "best_epoch": history.best_epoch, "val_score": history.val_score,
        "epoch_seconds": history.epoch_seconds, "chart_seconds": history.chart_seconds,
        "flow_seconds_per_epoch": sum(history.epoch_seconds) / max(history.epochs, 1),
        "train_seconds": history.chart_seconds + sum(history.epoch_seconds), "wall_seconds": wall,
        "trace": trace,
        "purity": cell_purity(model, splits.train), "weights_entropy": float(-(model.weights * model.log_weights).sum()),
    }


def _jobs(arms: list[str], seeds: list[int], sets: list[str]) -> list[tuple[str, str, int]]:
    return [(a, d, s) for s in seeds for a in arms for d in sets]


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["arm"], r["dataset"], r["seed"]))
    arms = _arm_list(args.arms)
    todo = [j for j in _jobs(arms, [int(s) for s in args.seeds.split(",")], args.sets.split(",")) if j not in done]
    print(f"{len(todo)} trainings to run ({len(done)} done)", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(train_one, *j): j for j in todo}
        for f in as_completed(futures):
            j = futures[f]
            try:
                r = f.result()
            except Exception as e:  # noqa: BLE001  (a failed training is recorded and the sweep goes on)
                print(f"FAILED {j}: {type(e).__name__}: {e}", flush=True)
                continue
            with results.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{time.perf_counter() - t0:7.0f}s {j[0]:>18} {j[1]:>20} seed {j[2]}: gap {r['gap']:.3f} "
                  f"epochs {r['epochs']} {r['flow_seconds_per_epoch'] * 1e3:.0f} ms/epoch "
                  f"train {r['train_seconds']:.1f}s", flush=True)


def _arm_list(spec: str) -> list[str]:
    names: list[str] = []
    for part in spec.split(","):
        names += list(ESSENTIAL if part == "essential" else SECONDARY if part == "secondary" else [part])
    for n in names:
        if n not in ARMS:
            raise SystemExit(f"--arms: expected names among {', '.join(ARMS)}, got {n!r}")
    return names


def _load(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.3f}" + (f" ±{statistics.stdev(values):.3f}" if len(values) > 1 else "") + f" ({len(values)})"


def replay(scores: list[float], patience: int = 10) -> tuple[int, int]:
    """(best epoch, epochs run) of early stopping on a score sequence (1-based)."""
    best, best_epoch, since = -math.inf, 0, 0
    for e, s in enumerate(scores, 1):
        if s > best:
            best, best_epoch, since = s, e, 0
        else:
            since += 1
        if since >= patience:
            return best_epoch, e
    return best_epoch, len(scores)


def replay_hybrid(trace: list[dict], top: int, margin: float, patience: int = 10) -> tuple[int, int, int]:
    """Early stopping that scores the top-``top`` bound every epoch and the exact mixture only when the
    bound is within ``margin`` of the best epoch's bound: (best epoch, epochs run, exact checks run)."""
    best, best_bound, best_epoch, since, exact_runs = -math.inf, -math.inf, 0, 0, 0
    for e, row in enumerate(trace, 1):
        b = row[f"top{top}"]
        improved = False
        if b > best_bound - margin:
            exact_runs += 1
            if row["exact"] > best:
                best, best_bound, best_epoch, improved = row["exact"], b, e, True
        if improved:
            since = 0
        else:
            since += 1
        if since >= patience:
            return best_epoch, e, exact_runs
    return best_epoch, len(trace), exact_runs


def report(args) -> None:
    rows = _load(Path(args.out))
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    print("## Test gap to the oracle (nats, mean ±sd (trials)), VQ-MAF\n")
    print("| arm | " + " | ".join(SETS) + " | worst | epochs | ms/epoch | train s |")
    print("|---|" + "---|" * (len(SETS) + 4))
    base = [r["flow_seconds_per_epoch"] for r in rows if r["arm"] == "cells-b128"]
    for a in arms:
        rs = [r for r in rows if r["arm"] == a]
        cells = [_fmt([r["gap"] for r in rs if r["dataset"] == d]) for d in SETS]
        means = [statistics.fmean([r["gap"] for r in rs if r["dataset"] == d]) for d in SETS
                 if any(r["dataset"] == d for r in rs)]
        print(f"| {a} | " + " | ".join(cells) + f" | {max(means):.3f} | {statistics.fmean(r['epochs'] for r in rs):.0f}"
              f" | {statistics.fmean(r['flow_seconds_per_epoch'] for r in rs) * 1e3:.0f}"
              f" | {statistics.fmean(r['train_seconds'] for r in rs):.1f} |")
    if base:
        print(f"\n(cells-b128 mean {statistics.fmean(base) * 1e3:.0f} ms per flow epoch in the pool; "
              f"per-epoch ratios side by side: `python -m pytest benchmarks/defaults.py`)")

    print("\n## Scoring lower bound: test top-T mixture minus the full mixture (nats, mean over runs)\n")
    print("| arm | " + " | ".join(f"top-{t}" for t in BOUND_TOPS) + " |")
    print("|---|" + "---|" * len(BOUND_TOPS))
    for a in arms:
        rs = [r for r in rows if r["arm"] == a]
        print(f"| {a} | " + " | ".join(f"{statistics.fmean(r['test_top_bounds'][str(t)] - r['test_exact'] for r in rs):.4f}"
                                        for t in BOUND_TOPS) + " |")

    print("\n## Early stopping: rules replayed on each run's per-epoch scores against the exact check\n")
    rules = [(f"top-{t} bound alone", t, None) for t in BOUND_TOPS] + \
            [(f"top-{t} bound, exact within {mg}", t, mg) for t in (1, 4) for mg in (0.0, 0.02, 0.05)]
    print("| rule | runs choosing the exact check's best epoch | worst exact val score lost at the chosen epoch "
          "(nats) | exact checks run / epochs |")
    print("|---|---|---|---|")
    for name, t, mg in rules:
        same, n, checks, total, worst = 0, 0, 0, 0, 0.0
        for r in rows:
            tr = r["trace"]
            pat = r.get("patience", 10)
            ref_best, ref_epochs = replay([row["exact"] for row in tr], pat)
            if (ref_best, ref_epochs) != (r["best_epoch"], r["epochs"]):
                continue  # trace and training disagree (should not happen)
            if mg is None:
                best, epochs = replay([row[f"top{t}"] for row in tr], pat)
                runs = 0
            else:
                best, epochs, runs = replay_hybrid(tr, t, mg, pat)
            n += 1
            ok = best == ref_best and epochs <= len(tr)
            same += ok
            if best <= len(tr):
                worst = max(worst, tr[ref_best - 1]["exact"] - tr[best - 1]["exact"])
            checks += runs
            total += min(epochs, len(tr))
        print(f"| {name} | {same}/{n} | {worst:.4f} | {checks}/{total} |")

    print("\n## Cell purity (training points): fraction of cells holding two or more separate pieces\n")
    print("| arm | " + " | ".join(SETS) + " |")
    print("|---|" + "---|" * len(SETS))
    for a in arms:
        rs = [r for r in rows if r["arm"] == a]
        print(f"| {a} | " + " | ".join(_fmt([r["purity"]["mixed_cells"] for r in rs if r["dataset"] == d])
                                        for d in SETS) + " |")


def purity(args) -> None:
    """Cell purity of the two partitioners alone (no flow trained): mixed-cell fraction per set and K."""
    torch.set_num_threads(1)
    import vqflows

    ks = [int(k) for k in args.charts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"Mixed cells (fraction of cells holding >= 2 separate pieces), mean over seeds {seeds}; "
          f"effective chart count exp(H(p_k)) in brackets")
    print("| partition | K | " + " | ".join(SETS) + " |")
    print("|---|---|" + "---|" * len(SETS))
    for part in ("vqae", "kmeans"):
        for k in ks:
            cells = []
            for d in SETS:
                mixed, eff = [], []
                for seed in seeds:
                    splits = vqflows.datasets.load(d, seed=seed)
                    torch.manual_seed(seed)
                    model = vqflows.build(3, "maf", charts=k, partition=part)
                    fit_partition(model, splits.train, seed=seed)
                    fit_chart_weights(model, splits.train)
                    mixed.append(cell_purity(model, splits.train)["mixed_cells"])
                    eff.append(math.exp(float(-(model.weights * model.log_weights).sum())))
                cells.append(f"{statistics.fmean(mixed):.2f} ({statistics.fmean(eff):.1f})")
            print(f"| {part} | {k} | " + " | ".join(cells) + " |", flush=True)


# ------------------------------------------------------------------ timings (collected by the harness)
#: The arms timed side by side per set, the first one the reference of the ratios.
TIMED = {"helix": ("cells-b128", "mix4-b128", "mix4-b256", "mix4-b512", "mix2-b512", "cells-b512"),
         "spherical": ("cells-b128", "mix4-b128", "mix4-b512", "cells-b512")}
TIMED_EPOCHS = 5


def _charted(arm_name: str, splits):
    """VQ-MAF of ``arm_name`` with its charts, weights and frames fitted on the training split (seed 0)."""
    import vqflows

    arm = ARMS[arm_name]
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts=arm.charts, partition=arm.partition)
    fit_partition(model, splits.train, seed=0)
    fit_chart_weights(model, splits.train)
    return model


@pytest.mark.parametrize("dataset", list(TIMED))
def test_objective_epochs(benchmark, dataset):
    """Per-epoch cost of each arm, epochs interleaved arm by arm in one process (one thread): an epoch
    with the exact early-stopping check on 512 validation points, and the steps alone; ratios to the
    first arm (``cells-b128``, the old default)."""
    import vqflows
    from vqflows.training import EarlyStopping, train_flow

    torch.set_num_threads(1)
    splits = vqflows.datasets.load(dataset, seed=0)
    arms = TIMED[dataset]
    models = {a: _charted(a, splits) for a in arms}
    times: dict[str, list[float]] = {a: [] for a in arms}
    steps: dict[str, list[float]] = {a: [] for a in arms}

    def interleaved() -> None:
        for _ in range(TIMED_EPOCHS):
            for a in arms:
                arm = ARMS[a]
                for es, store in ((EarlyStopping(10**6, 512, top=None), times), (None, steps)):
                    h = train_flow(models[a], splits.train, splits.val if es else None, epochs=1,
                                   batch_size=arm.batch_size, lr=arm.lr, early_stopping=es, objective=arm.objective,
                                   top=arm.top, learn_weights=arm.learn_weights)
                    store[a].append(h.epoch_seconds[0])

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    ref, ref_steps = statistics.median(times[arms[0]]), statistics.median(steps[arms[0]])
    for a in arms:
        benchmark.extra_info.update({f"{a}_epoch_ms": statistics.median(times[a]) * 1e3,
                                     f"ratio_{a}_epoch": statistics.median(times[a]) / ref,
                                     f"{a}_steps_ms": statistics.median(steps[a]) * 1e3,
                                     f"ratio_{a}_steps": statistics.median(steps[a]) / ref_steps})


@pytest.mark.parametrize("check", ["exact", "top-4", "top-8"])
def test_early_stopping_check(benchmark, check):
    """The early-stopping check alone on 512 validation points (spherical, K = 32, ``mix4-b512``): the exact
    mixture over all charts against the top-4 and top-8 bounds."""
    import vqflows

    torch.set_num_threads(1)
    splits = vqflows.datasets.load("spherical", seed=0)
    model = _charted("mix4-b512", splits)
    val = _val_subset(splits.val, 512, 0)
    score = {"exact": lambda: model.log_prob(val),
             "top-4": lambda: model.log_joint(val, model.top_charts(val, 4)),
             "top-8": lambda: model.log_joint(val, model.top_charts(val, 8))}[check]
    with torch.no_grad():
        benchmark.pedantic(score, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["check_ms"] = benchmark.stats.stats.median * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--arms", default="essential")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--sets", default=",".join(SETS))
    r.add_argument("--jobs", type=int, default=2)
    q = sub.add_parser("report")
    q.add_argument("--out", required=True)
    u = sub.add_parser("purity")
    u.add_argument("--charts", default="4,8,16,32")
    u.add_argument("--seeds", default="0,1")
    args = p.parse_args(argv)
    {"run": run, "report": report, "purity": purity}[args.cmd](args)


if __name__ == "__main__":
    main()
