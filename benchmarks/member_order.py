"""Would the stacked default need all eight members? Members added one at a time, stopped on validation.

    python benchmarks/member_order.py runs/paper          # the paper grid's vq-maf runs (all sets, seeds)

For every finished ``vq-maf`` run of a grid, the members' log-densities of the validation and test splits
are computed once; then, for an order of the members and a rule, the members are added one after another,
each time restacked on validation (:func:`~vqflows.ensemble.stacking_weights`), until the stacked
validation log-likelihood gains less than ``delta`` nats ``patience`` times in a row. Prints one line per
order and rule: the share of the members' training seconds that stopping would save (the members after
the stop), and per set the mean gap to the oracle over the seeds / the largest. Nothing is retrained: a
member's seconds are those of its training in the grid.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one

import torch

import vqflows
from vqflows.ensemble import stacking_weights
from vqflows.runs import load_run

#: member indices in the grid's order: 8, 16, 32, 64 charts (first draw), then the same (second draw)
ORDERS = {"as trained": [0, 1, 2, 3, 4, 5, 6, 7], "fewest epochs first": [3, 2, 1, 0, 7, 6, 5, 4],
          "pairs, most charts first": [3, 7, 2, 6, 1, 5, 0, 4]}
RULES = [(delta, patience) for delta in (0.0, 0.001, 0.002, 0.003, 0.005) for patience in (1, 2)]


@torch.no_grad()
def members(grid: Path) -> dict[tuple[str, int], dict]:
    """Per (set, seed): the members' validation and test log-densities, their seconds and the oracle."""
    out = {}
    for folder in sorted(grid.glob("runs/*/vq-maf/seed-*")):
        if not (folder / "metrics.json").exists():
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        model, config = load_run(folder)
        splits = vqflows.datasets.load(config.dataset, n=config.n, seed=config.seed)
        rows = [r for r in metrics["chart_selection"] if r["trained"]]
        out[(config.dataset, config.seed)] = {
            "val": torch.stack([m.log_prob(splits.val) for m in model.members], -1).double(),
            "test": torch.stack([m.log_prob(splits.test) for m in model.members], -1).double(),
            "seconds": [r["seconds"] for r in rows], "oracle": metrics["oracle_log_likelihood"]}
    return out


def stopped(run: dict, order: list[int], delta: float, patience: int) -> list[int]:
    """The members trained before the rule stops (the last one, which did not gain enough, included)."""
    used, best, small = [], -float("inf"), 0
    for j in order:
        used.append(j)
        lp = run["val"][:, used]
        score = float(torch.logsumexp(lp + stacking_weights(lp).log(), -1).mean())
        gain, best = score - best, max(best, score)
        small = small + 1 if len(used) > 1 and gain < delta else 0
        if small >= patience:
            break
    return used


def main(grid: str) -> None:
    torch.set_num_threads(1)
    runs = members(Path(grid))
    if not runs:
        raise SystemExit(f"{grid}: expected a grid folder with finished vq-maf runs (runs/<set>/vq-maf/seed-<k>)")
    sets = list(dict.fromkeys(s for s, _ in runs))
    for name, order in ORDERS.items():
        for delta, patience in RULES:
            gaps = {s: [] for s in sets}
            saved = total = 0.0
            for (s, _), run in runs.items():
                used = stopped(run, order, delta, patience)
                w = stacking_weights(run["val"][:, used])
                test = float(torch.logsumexp(run["test"][:, used] + w.log(), -1).mean())
                gaps[s].append(run["oracle"] - test)
                saved += sum(t for j, t in enumerate(run["seconds"]) if j not in used)
                total += sum(run["seconds"])
            cells = "  ".join(f"{s} {statistics.mean(g):.4f}/{max(g):.3f}" for s, g in gaps.items())
            print(f"{name}, delta {delta}, patience {patience}: saves {saved / total:.2f} | {cells}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: member_order.py GRID_FOLDER")
    main(sys.argv[1])
