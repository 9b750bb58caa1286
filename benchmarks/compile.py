"""``torch.compile`` of the training loss (opt-in) against eager: first-epoch cost and later epochs.

    python benchmarks/compile.py [--epochs 8]

VQ-MAF on the helix with the default settings, eager then compiled, in this process (the compiled
run's first epoch includes compiling; run the script twice to see the warm-cache cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import vqflows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = vqflows.datasets.load("helix", seed=0)
    for compiled in (False, True):
        torch.manual_seed(0)
        model = vqflows.build(3, "maf", 32)
        t = time.perf_counter()
        h = vqflows.fit(model, splits.train, splits.val, epochs=args.epochs, patience=args.epochs + 1,
                        compile=compiled)
        total = time.perf_counter() - t
        print(f"compile={compiled}: first epoch {h.epoch_seconds[0]:.1f} s, later epochs median "
              f"{statistics.median(h.epoch_seconds[2:]) * 1000:.0f} ms, fit {total:.1f} s, "
              f"test log-likelihood {float(model.log_prob(splits.test).mean()):.3f}")


if __name__ == "__main__":
    main()
