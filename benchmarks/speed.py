"""Speed of vq-maf against maf on a 3-D set: training seconds per epoch, exact log_prob and sampling throughput.

    python benchmarks/speed.py [--dataset helix] [--epochs 10] [--threads 1] [--full]

``--full`` also times a complete ``vqflows train`` of vq-maf (all stages, early stopping) end to end.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time

import torch

import vqflows
from vqflows import VQFlow, datasets, fit


def throughput(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def step_and_check_seconds(model: VQFlow, train: torch.Tensor, val: torch.Tensor, repeats: int = 5) -> tuple[float, float]:
    """Seconds per epoch of training steps alone (batch 128), and of the early-stopping check alone."""
    k = model.assign(train)
    opt = torch.optim.Adam(model.flow.parameters(), lr=1e-3, fused=True)  # as in fit

    def epoch() -> None:
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 128):
            idx = perm[i:i + 128]
            loss = model.loss(train[idx], k[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch()
    t = time.perf_counter()
    for _ in range(repeats):
        epoch()
    steps = (time.perf_counter() - t) / repeats
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(repeats):
            model.log_prob(val[:512], "mixture")
        check = (time.perf_counter() - t) / repeats
    return steps, check


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="helix")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = datasets.load(args.dataset, seed=0)
    rows = {}
    for name, charts in (("maf", None), ("vq-maf", 32)):
        torch.manual_seed(0)
        model = VQFlow(3, "maf", charts)
        # patience above epochs: every run times the same number of epochs
        h = fit(model, s.train, s.val, epochs=args.epochs, patience=args.epochs + 1, seed=0)
        steps, check = step_and_check_seconds(model, s.train, s.val)
        with torch.no_grad():
            x = s.test
            rows[name] = {
                "epoch_seconds": sum(h.epoch_seconds) / h.epochs,
                "  of which training steps": steps,
                "  of which early-stopping check": check,
                "chart_seconds": h.chart_seconds,
                "log_prob_mixture_points_per_s": throughput(lambda: model.log_prob(x, "mixture"), len(x)),
                "log_prob_charts_points_per_s": throughput(lambda: model.log_prob(x, "charts"), len(x)),
                "sample_points_per_s": throughput(lambda: model.sample(10_000, seed=0), 10_000),
            }
    print(f"# {args.dataset}, {args.epochs} epochs, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    keys = list(rows["maf"])
    print(f"{'':34s} {'maf':>12s} {'vq-maf':>12s} {'ratio':>7s}")
    for k in keys:
        a, b = rows["maf"][k], rows["vq-maf"][k]
        print(f"{k:34s} {a:12.4g} {b:12.4g} {b / a:7.2f}")
    if args.full:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "vqflows", "train", "--dataset", args.dataset, "--model",
                                  "vq-maf", "--out", f"{d}/run", "--json", "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t
            m = json.loads(out.stdout)
        print(f"full `vqflows train --model vq-maf`: {wall:.1f} s wall, {m['epochs']} epochs, "
              f"test log-likelihood {m['test_log_likelihood']:.3f} (oracle {m['oracle_log_likelihood']:.3f})")


if __name__ == "__main__":
    main()
