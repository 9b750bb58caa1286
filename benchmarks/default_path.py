"""The library's default path against the command line, side by side: is the README's Python snippet as fast?

    python benchmarks/default_path.py [--epochs 10] [--rounds 2]

Times, interleaved over ``--rounds`` rounds and each in a fresh process, the same training (VQ-MAF
on the helix, the default settings, ``--epochs`` epochs): ``vqflows.fit`` as the README calls it (one
torch thread by default), ``vqflows.fit(..., threads=None)`` (torch's own thread count), and
``vqflows train`` (its ``train_seconds``: chart stage and flow, like the ``fit`` timings).
Prints the median wall time of each and the machine's load: the difference between one thread and
torch's default shows on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

_SNIPPET = """
import time, torch, vqflows
splits = vqflows.datasets.load("helix", n=10_000, seed=0)
torch.manual_seed(0)
model = vqflows.build(features=3, flow="maf", charts=32)
t = time.perf_counter()
vqflows.fit(model, splits.train, splits.val, epochs={epochs}, threads={threads})
print(time.perf_counter() - t)
"""


def _api(epochs: int, threads: int | None) -> float:
    """The README's snippet in a fresh process (as a user runs it), timing ``fit``."""
    done = subprocess.run([sys.executable, "-c", _SNIPPET.format(epochs=epochs, threads=threads)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.split()[-1])


def _cli(epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vqflows", "train", "--dataset", "helix", "--model", "vq-maf",
               "--out", str(Path(tmp) / "run"), "--epochs", str(epochs), "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        import json

        return json.loads(done.stdout)["train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    times: dict[str, list[float]] = {"fit (README, 1 thread)": [], "fit, threads=None (torch default)": [],
                                     "vqflows train (CLI)": []}
    load = os.getloadavg()
    for _ in range(args.rounds):
        times["fit (README, 1 thread)"].append(_api(args.epochs, 1))
        times["fit, threads=None (torch default)"].append(_api(args.epochs, None))
        times["vqflows train (CLI)"].append(_cli(args.epochs))
    print(f"VQ-MAF, helix, default settings, {args.epochs} epochs; median of {args.rounds} interleaved rounds; "
          f"torch default threads {torch.get_num_threads()}; load average at start {load[0]:.1f}")
    print()
    print("| path | training seconds (chart stage + flow) | ratio to fit |")
    print("|---|---:|---:|")
    base = statistics.median(times["fit (README, 1 thread)"])
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
