"""Test NLL of the von Mises–Fisher mixture baseline on the four Earth datasets.

For each dataset and seed: a random 80/10/10 split (:func:`vqflows.datasets.earth.load_earth`),
one EM fit per number of components on the training split, the number chosen by validation
log-likelihood, and the test NLL (mean -log p in nats, density w.r.t. the area measure of the
unit sphere; uniform = ln 4π ≈ 2.531). Prints mean ± sample std over seeds and the published
Mixture-of-Kent row for comparison.

Usage (from the repository root; about 5-10 minutes on one core):

    python -m benchmarks.earth_vmf --data-dir /path/to/earth [--seeds 0 1 2 3 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from vqflows.datasets.earth import EARTH_DATASETS, load_earth
from vqflows.vmf import KAPPA_MAX, fit_vmf_mixture

#: Published test NLL of a mixture of Kent distributions (De Bortoli et al. 2022, Table 4).
KENT = {"volcano": (-0.80, 0.47), "earthquake": (0.33, 0.05), "flood": (0.73, 0.07), "fire": (-1.18, 0.06)}


def run(data_dir: str, names: list[str], seeds: list[int], components: list[int], kappa_max: float,
        tol: float) -> dict:
    results = {}
    for name in names:
        rows = []
        for seed in seeds:
            start = time.perf_counter()
            s = load_earth(name, data_dir=data_dir, seed=seed)
            sel = fit_vmf_mixture(s.train, s.val, components=components, seed=seed, kappa_max=kappa_max, tol=tol)
            test_nll = -float(sel.model.log_prob(s.test).mean())
            rows.append(dict(seed=seed, test_nll=test_nll, components=sel.components,
                             val_nll={str(k): v for k, v in sel.val_nll.items()},
                             seconds=time.perf_counter() - start))
            print(f"{name:>10} seed {seed}: K={sel.components:<4d} test NLL {test_nll:7.3f}  "
                  f"({rows[-1]['seconds']:.1f} s)", flush=True)
        nll = np.array([r["test_nll"] for r in rows])
        results[name] = dict(mean=float(nll.mean()), std=float(nll.std(ddof=1)) if len(nll) > 1 else 0.0, runs=rows)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding the four Earth CSV files")
    parser.add_argument("--datasets", nargs="+", default=list(EARTH_DATASETS), choices=list(EARTH_DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--components", nargs="+", type=int, default=[10, 25, 50, 100, 200])
    parser.add_argument("--kappa-max", type=float, default=KAPPA_MAX)
    parser.add_argument("--tol", type=float, default=1e-6, help="EM stops when the mean log-likelihood gains less")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results = run(args.data_dir, args.datasets, args.seeds, args.components, args.kappa_max, args.tol)
    print(f"\ntest NLL (nats, area measure; uniform = {math.log(4 * math.pi):.3f}), mean ± std over seeds {args.seeds}")
    print(f"{'dataset':>10}  {'vMF mixture':>14}  {'Mixture of Kent':>15}  K chosen")
    for name, r in results.items():
        kent = KENT[name]
        chosen = [run_["components"] for run_ in r["runs"]]
        print(f"{name:>10}  {r['mean']:6.2f} ± {r['std']:4.2f}  {kent[0]:7.2f} ± {kent[1]:4.2f}  {chosen}")
    if args.out:
        config = dict(vars(args))
        with open(args.out, "w") as f:
            json.dump(dict(config=config, results=results), f, indent=1)


if __name__ == "__main__":
    main()
