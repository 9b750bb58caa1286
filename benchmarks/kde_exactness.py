"""How exact is the ``kde`` baseline row? scikit-learn's tree-based sums against exact ones, on the paper's sets.

    python benchmarks/kde_exactness.py            # six sets × seeds 0–4, the grid's splits (about 2 min)

For each set and seed the ``kde`` baseline is fitted as the grid fits it (:func:`vqflows.baselines.fit_baseline`,
scikit-learn's ``KernelDensity`` with ``rtol`` :data:`~vqflows.baselines.RTOL`, bandwidth chosen on validation);
its validation scores and its test log-likelihood are then recomputed exactly from the squared distances (each
point's kernel sum relative to its nearest training point, as Table 2's bandwidth search does,
``vqflows.experiments.kde``). Prints per run whether the exact validation scores choose the same bandwidth and
the test log-likelihood's error (scikit-learn − exact, nats per point), then the largest error per set.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one

import numpy as np
import torch

import vqflows
from vqflows.baselines import KDE_BANDWIDTHS, fit_baseline
from vqflows.experiments.kde import _held_out_log_density

SETS = ("spherical", "helix", "lissajous", "twisted-eight", "knotted", "interlocked-circles")


def main(seeds=range(5)) -> None:
    torch.set_num_threads(1)
    grid = np.array(KDE_BANDWIDTHS)
    for name in SETS:
        errors = []
        for seed in seeds:
            s = vqflows.datasets.load(name, seed=seed)  # the grid's splits (its default n)
            est = fit_baseline("kde", s.train, s.val, seed=seed)
            train = s.train.double()
            exact_val = _held_out_log_density(train, s.val.double(), grid) / len(s.val)
            same = grid[int(np.argmax(exact_val))] == est.size
            exact_test = _held_out_log_density(train, s.test.double(), np.array([est.size]))[0] / len(s.test)
            error = float(est.log_prob(s.test).mean()) - exact_test
            errors.append(error)
            print(f"{name} seed {seed}: bandwidth {est.size:.4g}, same choice exactly: {same}, "
                  f"test error {error:+.1e} nats")
        print(f"{name}: largest |test error| {max(map(abs, errors)):.1e} nats")


if __name__ == "__main__":
    main()
