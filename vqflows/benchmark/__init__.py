"""The former home of the paper's experiments, kept for imports: everything now lives in :mod:`vqflows.experiments`.

``vqflows benchmark`` dispatches through :mod:`.cli` to :func:`vqflows.experiments.cli.main`.
"""

from __future__ import annotations

from ..experiments import (
    PAPER_DATASETS,
    PAPER_MODELS,
    PaperRun,
    Report,
    Runner,
    Summary,
    Table,
    Task,
    benchmark_tables,
    best_rows,
    calibrate,
    collect,
    plan,
    run_grid,
    sample_score,
    score_run,
    select_bandwidth,
    summarize,
    summary_table,
    t_interval,
)

__all__ = ["PAPER_DATASETS", "PAPER_MODELS", "PaperRun", "Report", "Runner", "Summary", "Table", "Task",
           "benchmark_tables", "best_rows", "calibrate", "collect", "plan", "run_grid", "sample_score", "score_run",
           "select_bandwidth", "summarize", "summary_table", "t_interval"]
