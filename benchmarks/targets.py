"""Base flows against their VQ versions on helix, knotted and interlocked-circles (seed 0, defaults).

    python benchmarks/targets.py [--out runs/targets] [--datasets ...] [--models ...] [--set key=value ...]

Runs are kept in ``--out`` with the layout of ``vqflows benchmark`` (``<out>/runs/<dataset>/<model>/seed-<k>``)
and skipped when finished, so a rerun — or a run pointed at a benchmark's folder — only prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqflows.runs import RunConfig, train_run


def _same(out: Path, cfg: RunConfig) -> bool:
    ignore = ("device", "threads")
    saved = json.loads((out / "config.json").read_text())
    return all(saved.get(k) == v for k, v in cfg.to_dict().items() if k not in ignore)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/targets")
    p.add_argument("--datasets", default="helix,knotted,interlocked-circles")
    p.add_argument("--models", default="realnvp,vq-realnvp,maf,vq-maf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(1)
    table = {}
    for ds in args.datasets.split(","):
        for model in args.models.split(","):
            cfg = RunConfig(dataset=ds, model=model, seed=args.seed).with_overrides(args.set)
            out = Path(args.out) / "runs" / ds / model / f"seed-{args.seed}"
            if (out / "metrics.json").exists() and _same(out, cfg):
                m = json.loads((out / "metrics.json").read_text())
            else:
                m = train_run(cfg, out, overwrite=True)
            table[ds, model] = m
            print(f"{ds:20s} {model:12s} test {m['test_log_likelihood']:8.3f}  oracle {m['oracle_log_likelihood']:8.3f}  "
                  f"gap {m['gap_to_oracle']:6.3f}  epochs {m['epochs']:3d}  {m['train_seconds']:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
