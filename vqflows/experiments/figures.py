"""The paper's figures from run folders: samples (Figure 4), learned charts (Figure 1), training curves.

Figures are drawn with matplotlib's Agg backend and saved as PNG and PDF. Sample panels share
the real data's axis box (padded by a quarter of its size); samples falling outside it are not
drawn but counted in the panel title, so a flow that scatters mass far off the manifold shows it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..runs import load_data, load_run
from .tables import DATASET_NAMES, MODEL_NAMES

#: Points drawn per scatter panel.
POINTS = 2_000


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib  # deferred: matplotlib is only needed for figures

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # deferred: matplotlib is only needed for figures

    return plt


def save_figure(fig, folder: str | os.PathLike, stem: str) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` in ``folder`` and close it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    pyplot().close(fig)
    return paths


def figure_samples(records: Sequence[dict], flow: str, folder: str | os.PathLike, *,
                   points: int = POINTS) -> list[Path]:
    """Figure 4 for one base flow: per dataset, real data / ``flow`` samples / ``vq-flow`` samples.

    Uses the lowest seed with both runs finished; datasets without such a pair are left out.
    Returns the written paths (none if no dataset has both runs).
    """
    pairs = _paired_runs(records, [flow, f"vq-{flow}"])
    if not pairs:
        return []
    plt = pyplot()
    fig = plt.figure(figsize=(2.8 * len(pairs), 8.4))
    labels = ["Real data", MODEL_NAMES.get(flow, flow), MODEL_NAMES.get(f"vq-{flow}", f"vq-{flow}")]
    for j, (dataset, folders) in enumerate(pairs.items()):
        runs = [load_run(f) for f in folders]
        config = runs[0][1]
        data = _subset(load_data(config).train, points, config.seed)
        box = _box(data)
        panels = [data] + [model.sample(points, seed=config.seed) for model, _ in runs]
        for i, x in enumerate(panels):
            ax = _axes(fig, 3, len(pairs), i * len(pairs) + j + 1, x.shape[1])
            shown = _scatter(ax, x, box)
            title = DATASET_NAMES.get(dataset, dataset) if i == 0 else ""
            off = len(x) - shown
            ax.set_title(title + (f"\n{off} of {len(x)} off-frame" if off else ""), fontsize=8)
            if j == 0:
                _row_label(ax, labels[i])
    fig.suptitle(f"Samples of {labels[1]} and {labels[2]} (seed {config.seed})")
    return save_figure(fig, folder, f"figure4-{flow}")


def figure_charts(records: Sequence[dict], model: str, folder: str | os.PathLike, *,
                  points: int = POINTS) -> list[Path]:
    """Figure 1: training points of each dataset coloured by their nearest chart, ``model.assign(x)``."""
    pairs = _paired_runs(records, [model])
    if not pairs:
        return []
    plt = pyplot()
    fig = plt.figure(figsize=(3.2 * len(pairs), 3.4))
    for j, (dataset, (path,)) in enumerate(pairs.items()):
        vq, config = load_run(path)
        data = _subset(load_data(config).train, points, config.seed)
        with torch.no_grad():
            charts = vq.assign(data).numpy()
        ax = _axes(fig, 1, len(pairs), j + 1, data.shape[1])
        _scatter(ax, data, _box(data), colors=chart_colors(charts, vq.K))
        used = len(np.unique(charts))
        ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)}\n{used} of {vq.K} charts used", fontsize=8)
    fig.suptitle(f"Learned charts of {MODEL_NAMES.get(model, model)} (colour: nearest chart)")
    return save_figure(fig, folder, f"figure1-{model}")


def figure_curves(records: Sequence[dict], folder: str | os.PathLike) -> list[Path]:
    """Validation log-likelihood per epoch (``history.json``), mean ± one std over trials, per dataset."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    if not datasets:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        models = list(dict.fromkeys(r["model"] for r in records if r["dataset"] == dataset))
        for model in models:
            curves = [val_curve(r["folder"]) for r in records if r["dataset"] == dataset and r["model"] == model]
            curves = [c for c in curves if c]
            if curves:
                plot_band(ax, *stack_curves(curves), label=MODEL_NAMES.get(model, model))
        ax.set_title(DATASET_NAMES.get(dataset, dataset), fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation log-likelihood")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, folder, "training-curves")


def chart_colors(charts: np.ndarray, k: int) -> np.ndarray:
    """RGBA colours ``(N, 4)`` for chart indices ``(N,)``: distinct for up to 20 charts, then cycling.

    Indices step through the 20-colour palette by 7 (coprime to 20), so neighbouring indices get
    contrasting hues rather than the palette's light/dark pairs.
    """
    plt = pyplot()
    if k <= 10:
        return plt.get_cmap("tab10")(charts % 10)
    return plt.get_cmap("tab20")((charts * 7) % 20)


def plot_band(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray, *, label: str | None = None, **kwargs) -> None:
    """A line with a shaded ± one standard deviation band."""
    line, = ax.plot(x, mean, label=label, **kwargs)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def stack_curves(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std ``(E,)`` over curves of unequal length (early stopping).

    Each epoch is summarised over the runs that reached it.
    """
    length = max(map(len, curves))
    table = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        table[i, :len(c)] = c
    counts = np.isfinite(table).sum(0)
    with warnings.catch_warnings():  # epochs reached by a single run have no spread
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(table, 0)
        std = np.where(counts > 1, np.nanstd(table, 0, ddof=1), 0.0)
    return np.arange(1, length + 1), mean, std


def val_curve(folder: str) -> list[float]:
    """Validation log-likelihood per epoch from a run folder's ``history.json`` (empty if absent)."""
    path = Path(folder) / "history.json"
    if not path.exists():
        return []
    values = json.loads(path.read_text()).get("val_log_likelihood", [])
    return [np.nan if v is None else float(v) for v in values]


def _paired_runs(records: Sequence[dict], models: list[str]) -> dict[str, list[str]]:
    """Per dataset, the folders of ``models`` for the lowest seed where all of them finished."""
    out = {}
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        by_seed: dict[int, dict[str, str]] = {}
        for r in records:
            if r["dataset"] == dataset and r["model"] in models:
                by_seed.setdefault(r["seed"], {})[r["model"]] = r["folder"]
        full = sorted(s for s, found in by_seed.items() if len(found) == len(models))
        if full:
            out[dataset] = [by_seed[full[0]][m] for m in models]
    return out


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def _box(x: torch.Tensor, pad: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    x = x.double().numpy()
    lo, hi = x.min(0), x.max(0)
    margin = pad * (hi - lo).max()
    return lo - margin, hi + margin


def _axes(fig, rows: int, cols: int, index: int, features: int):
    return fig.add_subplot(rows, cols, index, **({"projection": "3d"} if features >= 3 else {}))


def _scatter(ax, x: torch.Tensor, box, *, colors=None) -> int:
    """Scatter the points of ``x`` inside ``box`` (first three coordinates); returns how many were drawn."""
    x = torch.as_tensor(x).double().numpy()
    lo, hi = box
    inside = np.all(np.isfinite(x) & (x >= lo) & (x <= hi), axis=1)
    c = colors[inside] if colors is not None else "tab:blue"
    dims = min(3, x.shape[1])
    ax.scatter(*[x[inside, i] for i in range(dims)], s=1.5, c=c, alpha=0.6, linewidths=0, rasterized=True)
    for i, setter in enumerate([ax.set_xlim, ax.set_ylim] + ([ax.set_zlim] if dims == 3 else [])):
        setter(lo[i], hi[i])
    ax.tick_params(labelsize=5)
    return int(inside.sum())


def _row_label(ax, text: str) -> None:
    ax.text2D(-0.15, 0.5, text, transform=ax.transAxes, rotation=90, va="center", fontsize=9) \
        if hasattr(ax, "text2D") else ax.set_ylabel(text)
