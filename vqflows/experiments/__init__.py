"""The studies behind the paper's results, on one small framework beside the core (the core never imports them).

A study is a typed config (a dataclass; ``key=value`` overrides through :func:`vqflows.io.apply_overrides`),
a ``run_one(spec, folder)`` that fits one run and returns its record files, a plan that lists the
runs and skips the finished ones, and a summary that builds tables and figures from the run folders
alone. Every study runs on one job runner (:mod:`.runner`): this process, a local pool of spawned
workers (``--jobs N``), or a Dask cluster (``--scheduler ADDRESS``, :class:`~.runner.Runner`).

- :mod:`.runner` — :class:`~.runner.Task`, :class:`~.runner.Runner`, :class:`~.runner.Report`;
- :mod:`.paper` — Tables 1 and 2 (``vqflows benchmark``) on :mod:`.grid`, the dataset × model × trial grid
  (:class:`~.grid.PaperRun`);
- :mod:`.ablation` — Figure 6: number of charts K and partition on the helix;
- :mod:`.earth` — densities on S² from the Earth-science event sets against the published table;
- :mod:`.images` — the image study: FID and bits/dim over training (:mod:`vqflows.images` computes);
- :mod:`.stats`, :mod:`.tables`, :mod:`.kde`, :mod:`.figures` — trial summaries, tables, Table 2's
  sample score, the paper's figures;
- :mod:`.cli` — ``vqflows benchmark``.

Example:
    >>> from vqflows.experiments import cli
    >>> cli.main(["--datasets", "helix", "--models", "maf,vq-maf", "--trials", "2", "--epochs", "5"])  # doctest: +SKIP
"""

from __future__ import annotations

from .grid import PaperRun, plan, run_grid
from .kde import calibrate, sample_score, score_run, select_bandwidth
from .runner import Report, Runner, Task
from .stats import Summary, best_rows, summarize, t_interval
from .tables import PAPER_DATASETS, PAPER_MODELS, Table, benchmark_tables, collect, summary_table

__all__ = [
           "PAPER_DATASETS",
           "PAPER_MODELS",
           "PaperRun",
           "Report",
           "Runner",
           "Summary",
           "Table",
           "Task",
           "benchmark_tables",
           "best_rows",
           "calibrate",
           "collect",
           "plan",
           "run_grid",
           "sample_score",
           "score_run",
           "select_bandwidth",
           "summarize",
           "summary_table",
           "t_interval",
]
