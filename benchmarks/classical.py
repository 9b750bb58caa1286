"""VQ-MAF candidates against the classical baselines (validated GMM and Gaussian KDE) on the paper's sets.

    python benchmarks/classical.py [--out runs/classical] [--datasets ...] [--seeds 0] \
        [--candidates vqae32:partition=vqae,charts=32 gmm32:partition=gmm,charts=32 ...] [--choose a,b c,d]

Every candidate is ``vq-maf`` with its overrides, trained by :func:`vqflows.train_run` into
``<out>/runs/<dataset>/<label>/seed-<k>`` (finished runs are skipped, so a rerun only prints); the
baselines are the runs ``gmm`` and ``kde``. ``--choose`` adds columns that pick, per dataset and seed,
the candidate of the group with the best validation log-likelihood (what a validated default would
report) and sum the group's training times; ``--auto`` the column of the default ``partition=auto``
(the better on validation of ``gmm<K*>`` and ``gmm32``, K* the validated count of the ``gmm`` run). Printed: the gap to the oracle (nats, lower is better)
per dataset (mean over seeds), then fit times (s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqflows.runs import RunConfig, train_run

DATASETS = "spherical,helix,lissajous,twisted-eight,knotted,interlocked-circles"
CANDIDATES = ["vqae32:partition=vqae,charts=32", "gmm16:partition=gmm,charts=16", "gmm32:partition=gmm,charts=32",
              "gmm64:partition=gmm,charts=64"]


def _run(out: Path, config: RunConfig) -> dict:
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    return train_run(config, out, overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/classical")
    p.add_argument("--datasets", default=DATASETS)
    p.add_argument("--seeds", default="0")
    p.add_argument("--candidates", nargs="*", default=CANDIDATES, metavar="LABEL:KEY=VALUE,...")
    p.add_argument("--choose", nargs="*", default=[], metavar="LABEL,LABEL")
    p.add_argument("--auto", action="store_true",
                   help="add the column of partition=auto: the better on validation of gmm<K*> and gmm32, K* the "
                        "gmm run's validated count (run both candidates)")
    p.add_argument("--train", action="store_true", help="train missing runs (default: only print what is there)")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    cands = {}
    for item in args.candidates:
        label, _, sets = item.partition(":")
        cands[label] = dict(kv.split("=", 1) for kv in sets.split(",") if kv)
    rows = {}
    for label, overrides in [("gmm", None), ("kde", None), *cands.items()]:  # each candidate on every set first
        for seed in seeds:
            for ds in args.datasets.split(","):
                out = Path(args.out) / "runs" / ds / label / f"seed-{seed}"
                if not (out / "metrics.json").exists() and not args.train:
                    continue
                model = label if overrides is None else "vq-maf"
                config = RunConfig(dataset=ds, model=model, seed=seed).with_overrides(overrides or {})
                m = _run(out, config)
                rows[(ds, seed, label)] = m
                print(f"{ds:20s} seed {seed} {label:8s} gap {m['gap_to_oracle']:.4f} val {m['val_log_likelihood']:.4f} "
                      f"{m['train_seconds']:.1f} s", flush=True)
    groups = {g: g.split(",") for g in args.choose}
    if args.auto:
        groups["auto"] = []
    labels = ["gmm", "kde", *cands, *groups]
    print("\n| set | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels))
    for ds in args.datasets.split(","):
        gaps, times = [], []
        for label in labels:
            g, t = [], []
            for seed in seeds:
                if label in groups:
                    members = groups[label]
                    if label == "auto":  # the default's candidates: gmm<K*> (the validated count) and gmm32
                        best = rows.get((ds, seed, "gmm"), {}).get("size_selected")
                        members = list(dict.fromkeys([f"gmm{best}", "gmm32"]))
                    runs = [rows.get((ds, seed, c)) for c in members]
                    if any(r is None for r in runs):
                        continue
                    best = max(runs, key=lambda r: r["val_log_likelihood"])
                    g.append(best["gap_to_oracle"])
                    t.append(sum(r["train_seconds"] for r in runs))
                elif (ds, seed, label) in rows:
                    g.append(rows[(ds, seed, label)]["gap_to_oracle"])
                    t.append(rows[(ds, seed, label)]["train_seconds"])
            gaps.append(f"{sum(g) / len(g):.3f}" if g else "—")
            times.append(f"{sum(t) / len(t):.0f}" if t else "—")
        print(f"| {ds} | " + " | ".join(gaps) + " |")
        print(f"| {ds} (s) | " + " | ".join(times) + " |")


if __name__ == "__main__":
    main()
