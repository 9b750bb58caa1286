"""The ablation of the paper's Figure 6: number of charts K and partition method on the helix.

VQ-RealNVP (as in the paper) on ``helix`` with ``charts=K`` for K ∈ {1, 2, 4, 8, 16, 32, 64} and ``partition`` either
the VQ-AE or k-means, three trials, 25 epochs (the paper's setting) unless told otherwise. Run
folders are ``<root>/ablation/<partition>/K-<K>/seed-<seed>`` and each run's samples are scored
as for Table 2. Results are shown as mean ± one standard deviation over trials, as in the paper.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..baselines import BASELINES
from ..io import apply_overrides
from ..runs import RunConfig
from .figures import plot_band, pyplot, save_figure, stack_curves, val_curve
from .grid import PaperRun, run_config, run_folder
from .stats import summarize
from .tables import MODEL_NAMES, Table, read_record, summary_table

CHARTS = (1, 2, 4, 8, 16, 32, 64)
PARTITIONS = ("vqae", "kmeans")
DATASET = "helix"
MODEL = "vq-realnvp"  # the paper trains a RealNVP for its ablation
TRIALS = 3
EPOCHS = 25

PARTITION_NAMES = {"vqae": "VQ-AE", "kmeans": "k-means"}


def plan(root: str | os.PathLike, base: RunConfig, *, charts: Sequence[int] = CHARTS,
         partitions: Sequence[str] = PARTITIONS, seeds: Iterable[int] = range(TRIALS)) -> list[PaperRun]:
    """Runs for every partition × K × seed on :data:`DATASET` with :data:`MODEL`; ``base`` sets the rest."""
    root = Path(root)
    seeds = list(seeds)
    runs = [PaperRun(apply_overrides(base, {"dataset": DATASET, "model": MODEL, "seed": s, "charts": k,
                                            "partition": p}),
                     root / "ablation" / p / f"K-{k}" / f"seed-{s}", True, root / "kde")
            for s in seeds for p in partitions for k in charts]
    # the classical baselines on the same splits (shared with Table 1's run folders)
    return runs + [PaperRun(run_config(base, DATASET, b, s), run_folder(root, DATASET, b, s), True, root / "kde")
                   for s in seeds for b in BASELINES]


def collect(root: str | os.PathLike, *, charts: Iterable[int] | None = None,
            seeds: Iterable[int] | None = None) -> list[dict]:
    """One record per finished ablation run: metrics plus ``partition``, ``charts``, ``sample_kde``, ``folder``."""
    keep_k = None if charts is None else set(charts)
    keep_s = None if seeds is None else set(seeds)
    records = []
    for path in sorted(Path(root).glob("ablation/*/K-*/seed-*/metrics.json")):
        folder = path.parent
        k = int(folder.parent.name.removeprefix("K-"))
        record = read_record(folder)
        if (keep_k is not None and k not in keep_k) or (keep_s is not None and record["seed"] not in keep_s):
            continue
        records.append({**record, "partition": folder.parent.parent.name, "charts": k})
    for path in sorted(Path(root).glob(f"runs/{DATASET}/*/seed-*/metrics.json")):
        folder = path.parent
        if folder.parent.name in BASELINES:
            record = read_record(folder)
            if keep_s is None or record["seed"] in keep_s:
                records.append({**record, "partition": folder.parent.name, "charts": None})
    return records


def tables(records: Sequence[dict]) -> list[Table]:
    """Test log-likelihood and sample KDE score, rows partitions × columns K, mean ± std; the classical
    baselines (which have no K) are reference rows, the same in every column."""
    baselines = [r for r in records if r["charts"] is None]
    records = [r for r in records if r["charts"] is not None]
    common = {"rows_key": "partition", "columns_key": "charts", "spread": "std", "row_order": PARTITIONS,
                  "column_order": CHARTS, "row_label": "Partition", "names": _names(records)}
    out = [summary_table(records, lambda r: r.get("test_log_likelihood"), name="ablation-test",
                         title=f"Ablation ({DATASET}, {MODEL}): test log-likelihood against K", **common),
           summary_table(records, lambda r: (r.get("sample_kde") or {}).get("score"), name="ablation-samples",
                         title=f"Ablation ({DATASET}, {MODEL}): KDE log-likelihood of samples against K", **common)]
    values = (lambda r: r.get("test_log_likelihood"), lambda r: (r.get("sample_kde") or {}).get("score"))
    for table, value in zip(out, values):
        for b in BASELINES:
            group = sorted((r for r in baselines if r["partition"] == b and value(r) is not None), key=lambda r: r["seed"])
            if group and table.columns:
                cell = summarize([value(r) for r in group], [r["seed"] for r in group])
                table.references[f"{MODEL_NAMES[b]} (validated size)"] = {c: cell for c in table.columns}
    return [t for t in out if t.rows]


def figure(records: Sequence[dict], folder: str | os.PathLike) -> list[Path]:
    """Figure 6: (a) sample KDE score and (b) test log-likelihood against K; (c) validation curves at K = 32.

    Lines are means over trials with ± one standard deviation shaded; (c) uses K = 32 when run,
    else the largest K available.
    """
    records = [r for r in records if r["charts"] is not None]
    if not records:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("(a) Sample generation", lambda r: (r.get("sample_kde") or {}).get("score"),
               "KDE log-likelihood of samples"),
              ("(b) Density estimation", lambda r: r.get("test_log_likelihood"), "test log-likelihood")]
    ks = sorted({r["charts"] for r in records})
    for ax, (title, value, ylabel) in zip(axes, panels):
        for p in PARTITIONS:
            ks, mean, std = _by_charts(records, p, value)
            if len(ks):
                plot_band(ax, ks, mean, std, label=PARTITION_NAMES[p], marker="o", markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("number of charts K")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    k = 32 if 32 in ks else ks[-1]
    ax = axes[2]
    for p in PARTITIONS:
        curves = [c for c in (val_curve(r["folder"]) for r in records if r["partition"] == p and r["charts"] == k) if c]
        if curves:
            plot_band(ax, *stack_curves(curves), label=PARTITION_NAMES[p])
    ax.set_title(f"(c) Training, K = {k}", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation log-likelihood")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Ablation on {DATASET} with {MODEL}: mean ± one std over trials", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, folder, "figure6-ablation")


def _by_charts(records: Sequence[dict], partition: str, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ks, means, stds = [], [], []
    for k in sorted({r["charts"] for r in records if r["partition"] == partition}):
        v = np.array([x for r in records if r["partition"] == partition and r["charts"] == k
                      if (x := value(r)) is not None], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            ks.append(k)
            means.append(v.mean())
            stds.append(v.std(ddof=1) if v.size > 1 else 0.0)
    return np.array(ks), np.array(means), np.array(stds)


def _names(records: Sequence[dict]) -> dict:
    return {**PARTITION_NAMES, **{k: f"K={k}" for k in {r["charts"] for r in records}}}
