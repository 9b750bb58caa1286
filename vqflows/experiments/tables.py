"""Tables in the paper's layout (rows models, columns datasets), built from run folders only.

Every number comes from the files a run leaves: ``metrics.json`` (Table 1, the gap to the oracle,
the reconstruction error) and ``sample_kde.json`` (Table 2), so ``--tables-only`` rebuilds them
without training. A cell is the mean over trials with a spread (:mod:`.stats`); the best model
per column is marked; reference rows (the oracle, the true generator) are shown but never ranked.
Each table is written as Markdown, CSV (full precision) and JSON (with every trial's value).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_json, write_text
from ..runs import MODELS
from .stats import Summary, best_rows, summarize

#: The paper's datasets and models, in its tables' order.
PAPER_DATASETS = ("spherical", "helix", "lissajous", "twisted-eight", "knotted", "interlocked-circles")
#: The classical baselines (:mod:`vqflows.baselines`) close the list: fitted on the same splits, sized on validation.
PAPER_MODELS = ("realnvp", "vq-realnvp", "maf", "vq-maf", "cef", "vq-cef", "gmm", "kde")

MODEL_NAMES = {"realnvp": "RealNVP", "maf": "MAF", "nsf": "NSF", "cef": "CEF"}
MODEL_NAMES.update({f"vq-{k}": f"VQ-{v}" for k, v in list(MODEL_NAMES.items())})
MODEL_NAMES.update({"gmm": "GMM", "kde": "KDE"})
DATASET_NAMES = {"spherical": "Spherical", "helix": "Helix", "lissajous": "Lissajous",
                 "twisted-eight": "Twisted-Eight", "knotted": "Knotted", "interlocked-circles": "Interlocked"}

SPREADS = {"ci": "95% confidence interval (Student t)", "std": "one standard deviation"}


@dataclass
class Table:
    """A table of :class:`~vqflows.experiments.stats.Summary` cells.

    ``rows[row][column]`` are ranked per column (highest mean best, or lowest with
    ``higher_is_better=False``); ``references[label][column]`` are extra rows, not ranked.
    ``spread`` says what follows "±": ``"ci"`` (the cell's t-interval) or ``"std"``.
    """

    name: str
    title: str
    columns: list[str]
    rows: dict[str, dict[str, Summary]]
    references: dict[str, dict[str, Summary]] = field(default_factory=dict)
    higher_is_better: bool = True
    spread: str = "ci"
    decimals: int = 2
    row_label: str = "Model"
    names: dict[str, str] = field(default_factory=dict)

    def best(self) -> dict[str, set[str]]:
        """For each column, the rows whose displayed mean is best."""
        return {c: best_rows({r: cells.get(c, Summary(None, None, None, 0)).mean for r, cells in self.rows.items()},
                             higher=self.higher_is_better, decimals=self.decimals) for c in self.columns}

    def _spread(self, cell: Summary) -> float | None:
        return cell.ci if self.spread == "ci" else cell.std

    def _show(self, key: str) -> str:
        return self.names.get(key, MODEL_NAMES.get(key, DATASET_NAMES.get(key, key)))

    def to_markdown(self) -> str:
        best = self.best()
        trials = max((c.n for cells in self.rows.values() for c in cells.values()), default=0)
        lines = [f"**{self.title}**", "",
                 "| " + " | ".join([self.row_label] + [self._show(c) for c in self.columns]) + " |",
                 "|---|" + "---:|" * len(self.columns)]
        for row, cells in self.rows.items():
            shown = [self._cell(cells.get(c), row in best[c], trials) for c in self.columns]
            lines.append("| " + " | ".join([self._show(row)] + shown) + " |")
        for label, cells in self.references.items():
            shown = [self._cell(cells.get(c), False, trials) for c in self.columns]
            lines.append("| " + " | ".join([f"*{label}*"] + shown) + " |")
        better = "higher" if self.higher_is_better else "lower"
        note = f"Mean ± {SPREADS[self.spread]} over {trials} trials; {better} is better; best per column in bold"
        cells = [cells.get(c) for cells in [*self.rows.values(), *self.references.values()] for c in self.columns]
        if any(c is not None and 0 < c.n < trials for c in cells):
            note += "; (n=…) marks cells with fewer trials"
        if any(c is None or c.mean is None for c in cells):
            note += "; — no finished run"
        return "\n".join(lines + ["", note + "."]) + "\n"

    def _cell(self, cell: Summary | None, best: bool, trials: int) -> str:
        if cell is None or cell.mean is None:
            return "—"
        d = self.decimals
        spread = self._spread(cell)
        text = f"{cell.mean:.{d}f}" + (f" ± {spread:.{d}f}" if spread is not None else "")
        if best:
            text = f"**{text}**"
        return text + (f" (n={cell.n})" if cell.n < trials else "")

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        key = "ci95" if self.spread == "ci" else "std"
        writer.writerow([self.row_label.lower()] + [f"{c}{s}" for c in self.columns for s in ("", f"_{key}", "_n")])
        for row, cells in [*self.rows.items(), *self.references.items()]:
            out = [row]
            for c in self.columns:
                cell = cells.get(c)
                if cell is None or cell.mean is None:
                    out += ["", "", 0]
                else:
                    spread = self._spread(cell)
                    out += [repr(cell.mean), "" if spread is None else repr(spread), cell.n]
            writer.writerow(out)
        return buf.getvalue()

    def to_dict(self) -> dict:
        best = self.best()

        def cells(row: str, values: dict[str, Summary], ranked: bool) -> dict:
            return {c: {**values[c].to_dict(), "best": ranked and row in best[c]} for c in self.columns if c in values}

        return {"name": self.name, "title": self.title, "columns": list(self.columns),
                "higher_is_better": self.higher_is_better, "spread": self.spread,
                "rows": [{"row": r, "reference": False, "cells": cells(r, v, True)} for r, v in self.rows.items()]
                + [{"row": r, "reference": True, "cells": cells(r, v, False)} for r, v in self.references.items()]}

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` into ``folder``; returns the paths."""
        return [write_text(Path(folder) / f"{self.name}{suffix}", text)
                for suffix, text in ((".md", self.to_markdown()), (".csv", self.to_csv()),
                                     (".json", json.dumps(self.to_dict(), indent=2, allow_nan=False)))]


def collect(root: str | os.PathLike, *, datasets: Iterable[str] | None = None, models: Iterable[str] | None = None,
            seeds: Iterable[int] | None = None) -> list[dict]:
    """One record per finished run under ``<root>/runs``: its metrics, plus ``sample_kde`` if scored.

    Records come in the paper's order (datasets, then models, then seeds) and carry ``dataset`` (the folder name), ``model``, ``seed`` and ``folder``; the filters
    keep only the given datasets, models and seeds (``None`` keeps all).
    """
    keep_d = None if datasets is None else {Path(d).stem for d in datasets}
    keep_m = None if models is None else set(models)
    keep_s = None if seeds is None else set(seeds)
    records = []
    for path in sorted(Path(root).glob("runs/*/*/seed-*/metrics.json")):
        folder = path.parent
        dataset, model = folder.parent.parent.name, folder.parent.name
        record = read_record(folder)
        seed = record.get("seed", _seed_of(folder))
        if (keep_d is not None and dataset not in keep_d) or (keep_m is not None and model not in keep_m) \
                or (keep_s is not None and seed not in keep_s):
            continue
        records.append({**record, "dataset": dataset, "model": model, "seed": seed})
    datasets_order, models_order = list(PAPER_DATASETS), _model_order()
    return sorted(records, key=lambda r: (_rank(r["dataset"], datasets_order), _rank(r["model"], models_order),
                                          r["seed"] if r["seed"] is not None else -1))


def read_record(folder: str | os.PathLike) -> dict:
    """A finished run's ``metrics.json`` with ``folder`` and ``sample_kde`` (its ``sample_kde.json``, or ``None``)."""
    folder = Path(folder)
    return {**json.loads((folder / "metrics.json").read_text()), "folder": str(folder),
            "sample_kde": read_json(folder / "sample_kde.json")}


def summary_table(records: Sequence[dict], value: Callable[[dict], float | None], *, name: str, title: str,
                  rows_key: str = "model", columns_key: str = "dataset", higher_is_better: bool = True,
                  spread: str = "ci", row_order: Sequence | None = None, column_order: Sequence | None = None,
                  references: dict[str, Callable[[dict], float | None]] | None = None, **options) -> Table:
    """Group ``records`` by ``rows_key`` × ``columns_key`` and summarise ``value(record)`` over trials.

    A reference ``label: value`` row takes one value per (column, seed): it depends on the data,
    not on the model, so every model's runs of a seed carry the same one.
    """
    rows = _ordered({r[rows_key] for r in records if value(r) is not None}, row_order)
    columns = _ordered({r[columns_key] for r in records}, column_order)
    cells = {row: {} for row in rows}
    for row in rows:
        for col in columns:
            group = sorted((r for r in records if r[rows_key] == row and r[columns_key] == col),
                           key=lambda r: r["seed"])
            if group:
                cells[row][col] = summarize([value(r) for r in group], [r["seed"] for r in group])
    refs = {}
    for label, ref in (references or {}).items():
        refs[label] = {}
        for col in columns:
            per_seed = {}
            for r in records:
                if r[columns_key] == col and ref(r) is not None:
                    per_seed.setdefault(r["seed"], ref(r))
            if per_seed:
                seeds = sorted(per_seed)
                refs[label][col] = summarize([per_seed[s] for s in seeds], seeds)
        if not refs[label]:
            del refs[label]
    return Table(name, title, columns, cells, refs, higher_is_better, spread, **options)


def benchmark_tables(records: Sequence[dict]) -> list[Table]:
    """Table 1 (with the oracle), the gap to the oracle, the CEF reconstruction error and Table 2."""
    order = {"row_order": _model_order(), "column_order": PAPER_DATASETS}
    tables = [
        summary_table(records, _get("test_log_likelihood"), name="table1", **order,
                      title="Table 1: test log-likelihood (nats per point)",
                      references={"Oracle": _get("oracle_log_likelihood")}),
        summary_table(records, _get("gap_to_oracle"), name="table1-gap", higher_is_better=False, **order,
                      title="Table 1, gap to the oracle: oracle − model test log-likelihood (nats)"),
    ]
    if any(r.get("test_log_likelihood_top") is not None for r in records):
        tables.append(summary_table(records, _bound_gap, name="table1-top-bound", higher_is_better=False, **order,
                                    title="Cheap scoring: mixture − top-m lower bound (nats; the bound scores each "
                                          "point's m nearest charts, m = the run's top, 4 by default)"))
    if any(r.get("reconstruction_error") is not None for r in records):
        tables.append(summary_table(records, _get("reconstruction_error"), name="table1-reconstruction",
                                    higher_is_better=False, **order,
                                    title="Reconstruction error of the embedded flows (mean squared distance)"))
    if any(r.get("train_seconds") is not None for r in records):
        tables.append(summary_table(records, _get("train_seconds"), name="table1-seconds", higher_is_better=False,
                                    **order, title="Fit time (s): training of the flows (charts and flow), "
                                    "fitting and sizing on validation of the baselines; one torch thread"))
    if any(r.get("sample_kde") for r in records):
        tables.append(summary_table(records, _kde("score"), name="table2", **order,
                                    title="Table 2: KDE log-likelihood of generated samples (nats per point)",
                                    references={"True generator": _kde("reference_score")}))
    return [t for t in tables if t.rows]


def _get(key: str) -> Callable[[dict], float | None]:
    return lambda r: _number(r.get(key))


def _bound_gap(r: dict) -> float | None:
    exact, bound = _number(r.get("test_log_likelihood")), _number(r.get("test_log_likelihood_top"))
    return None if exact is None or bound is None else exact - bound


def _kde(key: str) -> Callable[[dict], float | None]:
    return lambda r: _number((r.get("sample_kde") or {}).get(key))


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _model_order() -> list[str]:
    return list(PAPER_MODELS) + [m for m in MODELS if m not in PAPER_MODELS]


def _ordered(keys: set, order: Sequence | None) -> list:
    order = list(order or [])
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def _rank(key: str, order: list[str]) -> tuple[int, str]:
    return (order.index(key) if key in order else len(order), key)


def _seed_of(folder: Path) -> int | None:
    try:
        return int(folder.name.removeprefix("seed-"))
    except ValueError:
        return None
