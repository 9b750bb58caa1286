"""Reproducing the paper's experiments: Tables 1 and 2 and Figures 1, 4 and 6.

The pieces, each usable alone:

- :mod:`.grid` — the dataset × model × trial grid of run folders, trained by parallel workers,
  resumable (:func:`~.grid.plan`, :func:`~.grid.run_jobs`);
- :mod:`.stats` — mean ± Student-t interval over trials and the best row per column;
- :mod:`.kde` — sample quality: a cross-validated Gaussian KDE of the training data scores samples;
- :mod:`.tables` — Markdown/CSV/JSON tables built only from run folders;
- :mod:`.figures` and :mod:`.ablation` — the figures and the K/partition ablation;
- :mod:`.cli` — ``vqflows benchmark``.

Example:
    >>> from vqflows.benchmark import cli
    >>> cli.main(["--datasets", "helix", "--models", "maf,vq-maf", "--trials", "2", "--epochs", "5"])
"""

from __future__ import annotations

from .grid import PAPER_DATASETS, PAPER_MODELS, GridReport, Job, plan, run_jobs
from .kde import calibrate, sample_score, score_run, select_bandwidth
from .stats import Summary, best_rows, summarize, t_interval
from .tables import Table, benchmark_tables, collect, summary_table

__all__ = ["PAPER_DATASETS", "PAPER_MODELS", "GridReport", "Job", "plan", "run_jobs", "calibrate",
           "sample_score", "score_run", "select_bandwidth", "Summary", "best_rows", "summarize", "t_interval",
           "Table", "benchmark_tables", "collect", "summary_table"]
