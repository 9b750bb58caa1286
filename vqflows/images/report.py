"""The image study's report: summary table, FID-over-training figure (paper Figure 5), sample grids.

Everything here reads the run records written by :func:`~vqflows.images.study.train_image_run`
(``runs/<model>-trial<t>.json`` and their ``-samples.npy``), so a report can be redrawn at any time
from a study folder without retraining.

Letters: N images, D = H·W pixels.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json, write_json, write_text
from .data import ImageSplits
from .fid import ClassifierFID
from .study import inception_fid, inception_reference, run_path

__all__ = ["image_grid", "plot_fid_curves", "save_image_grid", "summarise", "write_report"]

_LABELS = {"realnvp": "RealNVP", "vq-realnvp": "VQ-RealNVP", "maf": "MAF", "vq-maf": "VQ-MAF"}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof = 1``) of ``values``; the deviation is ``None`` for a
    single value, and both are ``None`` if any value is missing or not finite."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < len(values) or not v:
        return None, None  # a non-finite run makes the model's mean undefined: say so, do not hide it
    arr = np.asarray(v, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def summarise(records: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One row per model from its finished run records: final FID and bits/dim, mean ± std over trials."""
    rows = []
    for model, runs in records.items():
        fid_mean, fid_std = _mean_std([r["final"]["fid"] for r in runs])
        bpd_mean, bpd_std = _mean_std([r["final"]["bits_per_dim"] for r in runs])
        inception = [r["final"].get("inception_fid") for r in runs]
        inc_mean, inc_std = _mean_std(inception) if runs and None not in inception else (None, None)
        rows.append({
            "inception_fid_mean": inc_mean, "inception_fid_std": inc_std, "inception_fid": inception,
            "model": model, "runs": len(runs),
            "fid_mean": fid_mean, "fid_std": fid_std,
            "bits_per_dim_mean": bpd_mean, "bits_per_dim_std": bpd_std,
            "fid": [r["final"]["fid"] for r in runs],
            "bits_per_dim": [r["final"]["bits_per_dim"] for r in runs],
            "iterations": runs[0]["final"]["iteration"] if runs else None,
            "parameters": runs[0]["parameters"] if runs else None,
            "train_seconds_mean": (float(np.mean([r["chart_seconds"] + r["train_seconds"] for r in runs]))
                                   if runs else None),
        })
    return rows


def _fmt(mean, std, digits: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _markdown(rows, dataset: str, reference_fid: float, trials: int, reference_inception: float | None = None) -> str:
    inc = reference_inception is not None
    lines = [(f"Image study on {dataset}: final classifier FID{', Inception FID' if inc else ''} and test bits/dim, "
              f"mean ± std over trials (lower is better)."), "",
             f"| model | runs | FID |{' Inception FID |' if inc else ''} bits/dim | iterations | parameters | train s |",
             f"|---|---|---|{'---|' if inc else ''}---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_LABELS.get(r['model'], r['model'])} | {r['runs']}/{trials} | "
                     f"{_fmt(r['fid_mean'], r['fid_std'], 2)} | "
                     + (f"{_fmt(r['inception_fid_mean'], r['inception_fid_std'], 1)} | " if inc else "")
                     + f"{_fmt(r['bits_per_dim_mean'], r['bits_per_dim_std'], 4)} | "
                     f"{r['iterations'] if r['iterations'] is not None else 'n/a'} | "
                     f"{r['parameters'] if r['parameters'] is not None else 'n/a'} | "
                     f"{_fmt(r['train_seconds_mean'], None, 0)} |")
    lines += ["", f"Reference: FID of held-out real images against the test images, same count: {reference_fid:.2f}"
              + (f" (Inception FID {reference_inception:.1f})." if inc else "."), ""]
    return "\n".join(lines)


def _csv(rows) -> str:
    keys = ["model", "runs", "fid_mean", "fid_std", "inception_fid_mean", "inception_fid_std", "bits_per_dim_mean",
            "bits_per_dim_std", "iterations", "parameters", "train_seconds_mean"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in keys})
    return buf.getvalue()


def plot_fid_curves(records: dict[str, list[dict]], path_stem: str | os.PathLike, *, title: str = "",
                    reference: float | None = None) -> list[Path]:
    """FID against training iteration, one panel per base flow, mean ± std band per model (Figure 5).

    Writes ``<path_stem>.png`` and ``.pdf``; returns their paths. Only iterations every trial of a
    model reached are averaged. ``reference``, the FID of real held-out images, is drawn dashed: the
    floor that sampling noise alone leaves at this sample count.
    """
    import matplotlib  # deferred: matplotlib is only needed for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib is only needed for figures

    bases = [b for b in ("realnvp", "maf") if any(m.removeprefix("vq-") == b for m in records)]
    fig, axes = plt.subplots(1, max(1, len(bases)), figsize=(5.0 * max(1, len(bases)), 3.8), squeeze=False)
    colours = {False: "tab:blue", True: "tab:red"}
    for ax, base in zip(axes[0], bases):
        for model in (base, f"vq-{base}"):
            runs = [r for r in records.get(model, []) if r["curve"]["iteration"]]
            if not runs:
                continue
            length = min(len(r["curve"]["iteration"]) for r in runs)
            it = np.asarray(runs[0]["curve"]["iteration"][:length], dtype=np.float64)
            fid = np.asarray([[np.nan if v is None else v for v in r["curve"]["fid"][:length]] for r in runs],
                             dtype=np.float64)
            mean = fid.mean(0)
            std = fid.std(0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
            colour = colours[model.startswith("vq-")]
            ax.plot(it, mean, color=colour, label=f"{_LABELS[model]} ({len(runs)} trials)")
            ax.fill_between(it, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="real held-out images")
        ax.set_title(f"({'ab'[bases.index(base)]}) {_LABELS[base]}")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("FID (classifier features)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def image_grid(levels, shape: tuple[int, int], *, columns: int = 8, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, H·W)`` into one array ``(rows·(H+pad)−pad, columns·(W+pad)−pad)``; padding is
    ``−1`` (drawn as a separator)."""
    levels = np.asarray(levels)
    H, W = shape
    if levels.ndim != 2 or levels.shape[1] != H * W:
        raise ValueError(f"levels: expected shape (N, {H * W}), got {levels.shape}")
    n = len(levels)
    rows = max(1, math.ceil(n / columns))
    grid = np.full((rows * (H + pad) - pad, columns * (W + pad) - pad), -1.0)
    for i, image in enumerate(levels):
        r, c = divmod(i, columns)
        grid[r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = image.reshape(H, W)
    return grid


def save_image_grid(path: str | os.PathLike, levels, shape: tuple[int, int], max_level: int, *,
                    count: int = 64, columns: int = 8) -> Path:
    """Write the first ``count`` images of ``levels`` ``(N, H·W)`` as a PNG grid (white digits on black)."""
    import matplotlib  # deferred: matplotlib is only needed for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib is only needed for figures

    grid = image_grid(np.asarray(levels)[:count], shape, columns=columns)
    rgb = np.where(grid[..., None] < 0, np.array([0.25, 0.35, 0.6]), np.clip(grid, 0, None)[..., None] / max_level)
    zoom = max(1, 256 // (columns * (shape[1] + 1)))
    rgb = np.kron(rgb, np.ones((zoom, zoom, 1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, rgb)
    return path


def write_report(out: str | os.PathLike, splits: ImageSplits, fid: ClassifierFID, *, models: Sequence[str],
                 trials: int, config, wall_seconds: float | None = None,
                 failures: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``summary.{md,csv,json}``, ``fid_curves.{png,pdf}`` and ``samples/<model>.png`` for the
    finished runs of ``models`` × ``trials`` in ``out``; returns the summary."""
    out = Path(out)
    records: dict[str, list[dict]] = {}
    for m in models:
        runs = [read_json(run_path(out, m, t)) for t in range(trials)]
        records[m] = [r for r in runs if r is not None and r.get("finished") and r.get("config") == config.to_dict()]
    rows = summarise(records)
    n = min(len(splits.test), config.fid_samples)
    held_out = splits.val if len(splits.val) >= 2 else splits.train
    reference_fid = fid.score(held_out[:n], fid.stats(splits.test))
    reference_inception = None
    if config.inception:
        inception = inception_fid(splits)
        reference_inception = inception.score(held_out[:n], inception_reference(inception, splits))
    summary = {"dataset": splits.name, "source": getattr(splits, "source", splits.name), "config": config.to_dict(),
               "trials": trials, "rows": rows, "reference_fid": reference_fid,
               "reference_inception_fid": reference_inception, "wall_seconds": wall_seconds, "failures": list(failures),
               "runs": {m: [f"runs/{m}-trial{r['trial']}.json" for r in rs] for m, rs in records.items()}}
    write_json(out / "summary.json", summary, indent=1)
    write_text(out / "summary.csv", _csv(rows))
    write_text(out / "summary.md", _markdown(rows, splits.name, reference_fid, trials, reference_inception))
    if any(records.values()):
        plot_fid_curves(records, out / "fid_curves", title=f"{splits.name}: FID over training (mean ± std)",
                        reference=reference_fid)
    for m, runs in records.items():
        if runs and runs[0].get("samples"):
            levels = np.load(run_path(out, m, runs[0]["trial"]).with_name(runs[0]["samples"]))
            save_image_grid(out / "samples" / f"{m}.png", levels, splits.shape, splits.levels - 1)
    save_image_grid(out / "samples" / "data.png", splits.test.numpy(), splits.shape, splits.levels - 1)
    return summary
