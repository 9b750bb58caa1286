r"""The Earth study's outputs: the table against the published rows, its Markdown and CSV, world maps, ``summary.md``.

Everything here reads the runs' ``result.json`` records (:func:`vqflows.experiments.earth.collect`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.earth import latlon_to_xyz, load_earth
from .earth import FLOOR_WEIGHTS, MODELS, OWN_FLOOR, EarthConfig, load_fitted
from .stats import summarize

COLUMNS = {"volcano": "Volcano", "earthquake": "Earthquake", "flood": "Flood", "fire": "Fire"}

#: Published test NLL, mean and standard deviation over 5 seeds (``data/earth/README.md``): De Bortoli
#: et al. 2022 Table 4 (first five rows), Huang et al. 2022, Chen & Lipman 2023.
PUBLISHED = {
    "Mixture of Kent": {"volcano": (-0.80, 0.47), "earthquake": (0.33, 0.05), "flood": (0.73, 0.07), "fire": (-1.18, 0.06)},
    "Riemannian CNF": {"volcano": (-6.05, 0.61), "earthquake": (0.14, 0.23), "flood": (1.11, 0.19), "fire": (-0.80, 0.54)},
    "Moser Flow": {"volcano": (-4.21, 0.17), "earthquake": (-0.16, 0.06), "flood": (0.57, 0.10), "fire": (-1.28, 0.05)},
    "Stereographic score-based": {"volcano": (-3.80, 0.27), "earthquake": (-0.19, 0.05), "flood": (0.59, 0.07),
                                  "fire": (-1.28, 0.12)},
    "Riemannian score-based": {"volcano": (-4.92, 0.25), "earthquake": (-0.19, 0.07), "flood": (0.45, 0.17),
                               "fire": (-1.33, 0.06)},
    "Riemannian diffusion (bound)": {"volcano": (-6.61, 0.97), "earthquake": (-0.40, 0.05), "flood": (0.43, 0.07),
                                     "fire": (-1.38, 0.05)},
    "Riemannian flow matching": {"volcano": (-7.93, 1.67), "earthquake": (-0.28, 0.08), "flood": (0.42, 0.05),
                                 "fire": (-1.86, 0.11)},
}

#: Training points (a seeded subset) on which ``train_nll`` is measured, to gauge overfitting.

#: Cell sizes of the world maps, in degrees, finest first; a map takes the finest whose cells times
#: charts stay within :data:`MAP_ROWS` flow evaluations (the mixture is summed over every chart).
MAP_DEGREES = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
MAP_ROWS = 8_000_000


def row_names(models: Sequence[str]) -> list[str]:
    """The table rows of ``models``: each model, and ``<model>+floor`` after each unit-sphere model whose
    floor is not part of its own fit (:data:`~.earth.OWN_FLOOR`)."""
    return [row for m in models
            for row in ((m, f"{m}+floor") if MODELS[m] == "unit sphere" and m not in OWN_FLOOR else (m,))]


def table(results: Sequence[dict[str, Any]], datasets: Sequence[str], models: Sequence[str]) -> dict[str, Any]:
    """Mean ± std (``ddof=1``) of the test NLL per row and dataset, with the published rows.

    Returns ``{"published": {method: {dataset: {"mean", "std"}}}, "rows": {row: {dataset: summary}}}``
    (rows from :func:`row_names`) where a summary also holds ``n``, ``values``, ``seeds``, the mean
    validation NLL ``val_mean`` and, where they apply, the means of ``reconstruction`` (learned-surface
    rows), ``charts``, ``components`` (vMF), ``floor_weight``, ``fit_seconds`` (wall seconds of the fit,
    without the final scoring) and ``cpu_seconds``.
    """
    rows: dict[str, dict[str, Any]] = {}
    for row in row_names(models):
        model, suffix = (row.removesuffix("+floor"), "_floor") if row.endswith("+floor") else (row, "")
        rows[row] = {}
        for d in datasets:
            runs = sorted((r for r in results if r["model"] == model and r["dataset"] == d), key=lambda r: r["seed"])
            s = summarize([r["test_nll" + suffix] for r in runs], [r["seed"] for r in runs])
            cell = {"mean": s.mean, "std": s.std, "n": s.n, "values": list(s.values), "seeds": list(s.seeds),
                    "val_mean": _mean(r["val_nll" + suffix] for r in runs)}
            own = model in OWN_FLOOR
            for key in ("reconstruction", "charts", "components", "fit_seconds", "cpu_seconds") \
                    + (("floor_weight",) if suffix or own else ()):
                if runs and key in runs[0]:
                    cell[key] = _mean(r[key] for r in runs)
            rows[row][d] = cell
    published = {name: {d: {"mean": v[0], "std": v[1]} for d, v in cells.items() if d in datasets}
                 for name, cells in PUBLISHED.items()}
    return {"published": published, "rows": rows, "datasets": list(datasets)}


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _label(row: str) -> str:
    model = row.removesuffix("+floor")
    name = {"vmf": "vMF mixture (EM)", "vmf-kde": "vMF kernel density (floor on validation)", "sphere": "sphere", "vq-sphere": "vq-sphere", "cef": "cef ‡",
            "vq-cef": "vq-cef ‡"}[model]
    return f"{name} + uniform floor †" if row.endswith("+floor") else name


def _density(row: str) -> str:
    return MODELS[row.removesuffix("+floor")]


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}±{std:.2f}".replace("-", "−") if std is not None else f"{mean:.2f}".replace("-", "−")


def markdown(t: dict[str, Any]) -> str:
    """The table in Markdown: published rows (marked), then this package's rows; the best mean in bold."""
    datasets = t["datasets"]
    lines = ["| method | source | density w.r.t. | " + " | ".join(COLUMNS[d] for d in datasets) + " |",
             "|---|---|---|" + "---|" * len(datasets)]
    # learned-surface rows are not densities on the unit sphere: they never count as best
    means = {d: [c[d]["mean"] for c in t["published"].values()]
             + [cells[d]["mean"] for row, cells in t["rows"].items() if _density(row) == "unit sphere"]
             for d in datasets}
    best = {d: min((m for m in means[d] if m is not None), default=None) for d in datasets}

    def show(d: str, mean, std, eligible: bool = True) -> str:
        text = _cell(mean, std)
        won = eligible and mean is not None and best[d] is not None and round(mean, 2) == round(best[d], 2)
        return f"**{text}**" if won else text

    for name, cells in t["published"].items():
        lines.append(f"| {name} | published | unit sphere | "
                     + " | ".join(show(d, cells[d]["mean"], cells[d]["std"]) for d in datasets) + " |")
    for row, cells in t["rows"].items():
        eligible = _density(row) == "unit sphere"
        lines.append(f"| {_label(row)} | this run | {_density(row)} | "
                     + " | ".join(show(d, cells[d]["mean"], cells[d]["std"], eligible) for d in datasets) + " |")
    return "\n".join(lines) + "\n"


def csv_text(t: dict[str, Any]) -> str:
    """The table in long form: ``method, source, density, dataset, mean, std, n``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "source", "density", "dataset", "mean", "std", "n"])
    for name, cells in t["published"].items():
        for d in t["datasets"]:
            w.writerow([name, "published", "unit sphere", d, cells[d]["mean"], cells[d]["std"], 5])
    for row, cells in t["rows"].items():
        for d in t["datasets"]:
            c = cells[d]
            w.writerow([row, "this run", _density(row), d, _num(c["mean"]), _num(c["std"]), c["n"]])
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def comparisons(t: dict[str, Any], model: str = "vq-sphere") -> list[str]:
    """Sentences comparing row ``model``'s mean test NLL with three published rows, dataset by dataset."""
    if model not in t["rows"]:
        return []
    lines = []
    for method in ("Mixture of Kent", "Riemannian score-based", "Riemannian flow matching"):
        ahead, behind = [], []
        for d in t["datasets"]:
            ours, theirs = t["rows"][model][d]["mean"], t["published"][method][d]["mean"]
            if ours is None:
                continue
            (ahead if ours < theirs else behind).append(f"{COLUMNS[d]} ({_cell(ours, None)} vs {_cell(theirs, None)})")
        lines.append(f"{model} vs {method}: lower NLL on {', '.join(ahead) or 'none'}; "
                     f"higher on {', '.join(behind) or 'none'}.")
    return lines


# -------------------------------------------------------------------------------------- world maps


@torch.no_grad()
def world_map(log_prob, test_latlon: np.ndarray, path: str | os.PathLike, *, title: str,
              degrees: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """Log-density on an equirectangular lat/lon grid with the test points overlaid; writes PNG and PDF.

    ``log_prob`` maps unit vectors ``(N, 3)`` of ``dtype`` to ``(N,)`` log-densities w.r.t. the area of
    the unit sphere, evaluated at the cell centres. Cells are ``degrees`` wide; the colour scale spans
    the top 12 nats.
    """
    import matplotlib  # deferred: matplotlib is only needed for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib is only needed for figures

    lon = np.arange(-180 + degrees / 2, 180, degrees)
    lat = np.arange(-90 + degrees / 2, 90, degrees)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    xyz = torch.from_numpy(latlon_to_xyz(glat.ravel(), glon.ravel())).to(dtype)
    logp = torch.cat([log_prob(xs).double() for xs in xyz.split(4096)]).numpy().reshape(glat.shape)
    fig, ax = plt.subplots(figsize=(10, 5.4))
    top = float(np.max(logp))
    image = ax.imshow(logp, origin="lower", extent=(-180, 180, -90, 90), cmap="magma", vmin=top - 12, vmax=top,
                      interpolation="nearest", aspect="equal")
    ax.scatter(test_latlon[:, 1], test_latlon[:, 0], s=3, c="#33ccff", linewidths=0, alpha=0.8, label="test points")
    ax.set(xlabel="longitude (°)", ylabel="latitude (°)", title=title, xlim=(-180, 180), ylim=(-90, 90),
           xticks=range(-180, 181, 60), yticks=range(-90, 91, 30))
    ax.legend(loc="lower left", fontsize=8, markerscale=3)
    fig.colorbar(image, ax=ax, shrink=0.8, label="log p (nats; area of the unit sphere)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = path.with_suffix(".png"), path.with_suffix(".pdf")
    fig.savefig(png, dpi=150)
    fig.savefig(pdf)
    plt.close(fig)
    return png, pdf


def draw_maps(t: dict[str, Any], results: Sequence[dict[str, Any]], out: Path, data_dir) -> list[Path]:
    """One map per dataset: the unit-sphere VQ-Flow with the lowest mean VALIDATION NLL, its lowest seed.

    Models are compared by their ``+floor`` rows, whose validation NLL one far-off point cannot swamp;
    the map shows the model's own density.
    """
    figures = []
    candidates = [m for m in ("vq-sphere", "sphere") if m in t["rows"]]
    for d in t["datasets"]:
        scored = [(t["rows"][f"{m}+floor"][d]["val_mean"], m) for m in candidates
                  if t["rows"][f"{m}+floor"][d]["val_mean"] is not None]
        if not scored:
            continue
        model = min(scored)[1]
        result = min((r for r in results if r["dataset"] == d and r["model"] == model), key=lambda r: r["seed"])
        fitted = load_fitted(Path(out) / "runs" / d / model / f"seed-{result['seed']}")
        splits = load_earth(d, data_dir=data_dir, seed=result["seed"])
        degrees = next((g for g in MAP_DEGREES if (360 / g) * (180 / g) * fitted.K <= MAP_ROWS), MAP_DEGREES[-1])
        title = (f"{COLUMNS[d]}: {model} (seed {result['seed']}, K={result['charts']}), "
                 f"test NLL {result['test_nll']:.2f} nats; {degrees:g}° cells")
        figures += world_map(fitted.log_prob, splits.split_latlon("test"), out / "figures" / d, title=title,
                             degrees=degrees)
    return figures


def summary_markdown(t: dict[str, Any], *, command: str, report: dict[str, Any], start: dict[str, Any],
                     end: dict[str, Any], workers: int, configs: dict[str, EarthConfig],
                     results: Sequence[dict[str, Any]], figures: Sequence[Path], out: Path,
                     invocations: Sequence[dict[str, Any]] = ()) -> str:
    """``summary.md``: the table, the comparisons, the timing and the machine."""
    cpu_total = sum(r.get("cpu_seconds", 0.0) for r in results)
    this = invocations[-1]["seconds"] if invocations else report["seconds"]
    training = [i for i in invocations if i["trained"] or i["failed"]]
    total = sum(i["seconds"] for i in training)
    lines = [
        "# Earth datasets on S²: test NLL (nats, lower is better)", "",
        f"Command: `{command}`", "",
        markdown(t),
        "Rows marked *published* are copied from the literature (mean ± std over 5 seeds). Rows marked *this run*",
        ("are mean ± std (ddof=1) over the seeds here, each on its own random 80/10/10 split. Densities of "
        "`vmf`, `vmf-kde`, `sphere` and `vq-sphere` are exact and normalised w.r.t. the area of the unit sphere (uniform: "
        f"ln 4π = {math.log(4 * math.pi):.3f})."),
        ("‡ `cef` and `vq-cef` learn their own surface; their density is w.r.t. the area of that surface, so their "
        "NLL is comparable with the other rows only insofar as the surface is the unit sphere (mean squared "
        "distance from the test points to it below)."),
        ("† `+floor` rows are the row above mixed with the uniform density, `(1 - w) p + w / 4π`, with `w` among "
        f"{', '.join(map(str, FLOOR_WEIGHTS))} chosen per run on validation NLL (no retraining): still exact and "
        "normalised, it caps the loss of a test point far from every training point."), "",
    ]
    lines += [f"- {s}" for s in comparisons(t) + comparisons(t, "vq-sphere+floor")] + [""]
    extra = [("| row | dataset | seeds | val NLL | K (mean) | vMF components | floor w (mean) "
             "| test reconstruction (mean sq. dist.) | fit s per run | CPU s per run |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    def fmt(v, f):
        return ("—" if v is None else format(v, f))
    for row, cells in t["rows"].items():
        for d in t["datasets"]:
            c = cells[d]
            extra.append(f"| {row} | {d} | {c['n']} | {fmt(c['val_mean'], '.3f')} | {fmt(c.get('charts'), '.0f')} "
                         f"| {fmt(c.get('components'), '.0f')} | {fmt(c.get('floor_weight'), '.4f')} "
                         f"| {fmt(c.get('reconstruction'), '.2e')} | {fmt(c.get('fit_seconds'), '.1f')} "
                         f"| {fmt(c.get('cpu_seconds'), '.1f')} |")
    lines += ["## Per-row details", ""] + extra + [""]
    lines += [
        "## Time and machine", "",
        (f"- Wall time of this invocation (runs, tables and maps): {this:.0f} s ({this / 60:.1f} min), of which the runs "
        f"{report['seconds']:.0f} s: {report['trained']} runs trained, {report['skipped']} reused from earlier "
        f"invocations, {len(report['failures'])} failed{' (interrupted)' if report.get('interrupted') else ''}."),
        (f"- Wall time summed over the {len(training)} invocation(s) that trained runs (`invocations.json`): "
        f"{total:.0f} s ({total / 60:.1f} min)."),
        (f"- CPU time summed over all {len(results)} runs in the table: {cpu_total:.0f} s ({cpu_total / 60:.1f} min); "
        f"divided by {workers} worker(s): {cpu_total / workers / 60:.1f} min, the wall time on {workers} idle core(s)."),
        f"- {workers} worker process(es), one torch thread each.",
        f"- CPU: {start['cpu']}; {start['cpu_count']} logical cores, {start['usable_cores']} usable by this process.",
        (f"- Load average (1, 5, 15 min) at start: {_load(start)}; at end: {_load(end)} "
        "(on a shared machine, other users' work slows these runs)."),
        f"- Python {start['python']}, torch {start['torch']}, {start['platform']}.", "",
        "## Hyperparameters of each row (the same for every dataset)", "",
        "```json", json.dumps({m: c.to_dict(m) for m, c in configs.items()}, indent=1), "```", "",
    ]
    if report["failures"]:
        lines += ["## Failed runs", ""] + [f"- {f}" for f in report["failures"]] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"- `{p.relative_to(out)}`" for p in figures] + [""]
    return "\n".join(lines)


def _load(h: dict[str, Any]) -> str:
    return "unknown" if h.get("load_average") is None else ", ".join(f"{v:.2f}" for v in h["load_average"])
