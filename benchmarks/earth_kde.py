"""Seed-by-seed comparison on the Earth datasets: the vMF mixture, the vMF kernel density and the
VQ-Flow started at a kernel density (``vq-sphere``'s default), with fit times.

For each dataset and seed, on the split of :func:`vqflows.datasets.earth.load_earth` (80/10/10):

* ``vmf``: EM mixture, components from ``EarthConfig().components`` chosen on validation;
* ``vmf-kde``: a kernel at every training point, κ from 25 log-spaced values in [20, 2·10⁵] and a floor
  from {0, 0.01, 0.05, 0.1}, both on validation (:func:`vqflows.vmf_kde.fit_vmf_kde`);
* ``start``: the kernel density that ``vq-sphere`` starts from, fixed or adaptive (α in
  ``EarthConfig().kernel_alphas``), chosen on validation: the VQ-Flow at epoch 0;
* ``vq-sphere``: that VQ-Flow after training (:func:`vqflows.kernel_flow.fit_kernel_flow`), with the floor of
  ``FLOOR_WEIGHTS`` chosen on validation, as in ``vqflows benchmark --earth``;
* with ``--fixed-start`` also ``vq-sphere (α=0)``: the same, started at the plain kernel density.

Prints one line per dataset and seed (test NLL, validation NLL in brackets, fit seconds) and the
published flow-matching row. One torch thread.

Usage (from the repository root):

    python -m benchmarks.earth_kde --data-dir ../shared/data/earth [--datasets fire] [--seeds 0] [--out seed0.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from vqflows.datasets.earth import EARTH_DATASETS, load_earth
from vqflows.experiments.earth import FLOOR_WEIGHTS, EarthConfig, choose_floor, with_floor
from vqflows.kernel_flow import fit_kernel_flow
from vqflows.vmf import fit_vmf_mixture
from vqflows.vmf_kde import fit_vmf_kde

#: Published test NLL of Riemannian flow matching (Chen & Lipman 2023), mean ± std over 5 seeds.
FLOW_MATCHING = {"volcano": (-7.93, 1.67), "earthquake": (-0.28, 0.08), "flood": (0.42, 0.05), "fire": (-1.86, 0.11)}


def _floored(val: torch.Tensor, test: torch.Tensor) -> tuple[float, float, float]:
    w = choose_floor(val, FLOOR_WEIGHTS)
    return -float(with_floor(val, w).mean()), -float(with_floor(test, w).mean()), w


def one(name: str, data_dir: str, seed: int, fixed_start: bool) -> dict:
    config = EarthConfig()
    s = load_earth(name, data_dir=data_dir, seed=seed)
    out = {"dataset": name, "seed": seed, "n_train": len(s.train)}
    t = time.perf_counter()
    mix = fit_vmf_mixture(s.train, s.val, components=config.components, seed=seed).model
    val, test = mix.log_prob(s.val), mix.log_prob(s.test)
    out["vmf"] = dict(zip(("val", "test", "floor"), _floored(val, test)), seconds=time.perf_counter() - t)
    t = time.perf_counter()
    kde = fit_vmf_kde(s.train, s.val)
    out["vmf-kde"] = {"val": min(kde.val_nll.values()), "test": -float(kde.model.log_prob(s.test).mean()),
                      "kappa": kde.kappa, "floor": kde.floor, "seconds": time.perf_counter() - t}
    variants = [("vq-sphere", tuple(config.kernel_alphas))] + ([("vq-sphere (α=0)", (0.0,))] if fixed_start else [])
    for label, alphas in variants:
        t = time.perf_counter()
        fit = fit_kernel_flow(s.train, s.val, alphas=alphas, transforms=config.kernel_transforms,
                              hidden_features=(config.kernel_hidden,) * config.kernel_depth, epochs=config.kernel_epochs,
                              patience=config.kernel_patience, lr=config.kernel_lr, top=config.kernel_top,
                              seed=seed, guard_floors=FLOOR_WEIGHTS)
        seconds = time.perf_counter() - t
        sel = fit.selection
        if label == "vq-sphere":
            out["start"] = {"val": min(sel.val_nll.values()), "test": -float(sel.model.log_prob(s.test).mean()),
                            "alpha": sel.alpha, "kappa": sel.kappa, "floor": sel.floor}
        with torch.no_grad():
            test = fit.model.log_prob(s.test).double()
        v, te, w = _floored(fit.val_log_prob, test)
        out[label] = {"val": v, "test": te, "floor": w, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
                      "seconds": seconds}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/earth")
    p.add_argument("--datasets", default=",".join(EARTH_DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fixed-start", action="store_true", help="also train from the plain (α = 0) kernel density")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    keys = ("vmf", "vmf-kde", "start", "vq-sphere") + (("vq-sphere (α=0)",) if args.fixed_start else ())
    print("| set | seed | " + " | ".join(keys) + " | flow matching (published) |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for name in args.datasets.split(","):
        for seed in args.seeds:
            r = one(name, args.data_dir, seed, args.fixed_start)
            rows.append(r)
            cells = []
            for k in keys:
                c = r[k]
                extra = f", {c['seconds']:.0f} s" if "seconds" in c else ""
                cells.append(f"{c['test']:.3f} [{c['val']:.3f}{extra}]")
            fm = FLOW_MATCHING[name]
            print(f"| {name} | {seed} | " + " | ".join(cells) + f" | {fm[0]:.2f} ± {fm[1]:.2f} |", flush=True)
    print("test NLL [validation NLL, fit seconds]; lower is better; uniform = ln 4π = "
          f"{math.log(4 * math.pi):.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
