"""``vqflows benchmark --earth``: run (or resume) the Earth grid (:mod:`.earth`), then write its tables, maps and
summary (:mod:`.earth_report`).

The options: ``--datasets``, ``--seeds``, ``--models``, ``--data-dir``, ``--out``, ``--epochs``, ``--set``
(hyperparameter overrides), ``--no-figures`` and the runner's (:func:`~.runner.add_runner_arguments`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checks import one_of, positive_int
from ..datasets.earth import EARTH_DATASETS
from ..io import claim, hardware, write_json, write_text
from . import earth_report
from .common import comma_list, command, log_invocation
from .earth import MODELS, EarthConfig, EarthRun, collect, plan, resolve_configs, run_grid
from .runner import Runner, add_runner_arguments, runner_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqflows benchmark --earth",
                                description="Test NLL on the Earth datasets (S²) against the published table.")
    p.add_argument("--earth", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--datasets", default=",".join(EARTH_DATASETS), help="comma-separated (default: all four)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds/splits, 0..n-1 (default 5)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated among {', '.join(MODELS)}")
    p.add_argument("--data-dir", default=os.environ.get("VQFLOWS_EARTH_DIR", "../shared/data/earth"),
                   help="folder holding the four CSV files")
    p.add_argument("--out", default="results/earth", help="output folder (runs, tables, figures, summary.md)")
    p.add_argument("--epochs", type=int, default=None, help="most epochs per learning-rate stage")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="hyperparameter overrides for every row (key=value) or one (model.key=value), "
                        "e.g. points_per_chart=32 vq-cef.hidden=32 'lrs=[0.003]'")
    p.add_argument("--no-figures", action="store_true", help="skip the world maps")
    add_runner_arguments(p, jobs=2)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``vqflows benchmark --earth``: run (or resume) the grid, then write the tables, maps and summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        datasets = comma_list(args.datasets, "datasets", lambda d: one_of(d, EARTH_DATASETS, name="datasets"))
        models = comma_list(args.models, "models", lambda m: one_of(m, MODELS, name="models"))
        positive_int(args.seeds, name="seeds")
        runner = runner_from_args(args)
        configs = resolve_configs(models, args.set, args.epochs)
        if not Path(args.data_dir).is_dir():
            raise ValueError(f"data-dir: expected the folder holding the Earth CSV files, got {args.data_dir!r}")
        runs = plan(datasets, models, list(range(args.seeds)), args.data_dir, configs)
        with claim(args.out):
            return _run(args, argv, runner, runs, datasets, models, configs)
    except ValueError as e:
        print(f"vqflows benchmark --earth: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str], runner: Runner, runs: list[EarthRun], datasets: list[str],
         models: list[str], configs: dict[str, EarthConfig]) -> int:
    wall = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(args.out)
    start = hardware()
    done = run_grid(runs, out, runner)
    report = {"total": done.total, "skipped": done.skipped, "trained": done.count(), "seconds": done.seconds,
              "failures": [f"{label}: {error}" for label, error in done.failures], "interrupted": done.interrupted}
    results = collect(runs, out)
    t = earth_report.table(results, datasets, models)
    write_text(out / "table.md", earth_report.markdown(t))
    write_text(out / "table.csv", earth_report.csv_text(t))
    figures = []
    if not (args.no_figures or done.interrupted):
        threads = torch.get_num_threads()
        torch.set_num_threads(max(args.jobs, threads))  # the workers are done: the maps may use their cores
        figures = earth_report.draw_maps(t, results, out, args.data_dir)
        torch.set_num_threads(threads)
    end = hardware()
    invocations = log_invocation(out / "invocations.json", {
        "command": command(argv), "started": started, "seconds": time.perf_counter() - wall,
        "grid_seconds": done.seconds, "trained": done.count(), "skipped": done.skipped,
        "failed": len(done.failures), "interrupted": done.interrupted, "workers": args.jobs,
        "load_start": start["load_average"], "load_end": end["load_average"]})
    write_json(out / "table.json", {**t, "configs": {m: c.to_dict(m) for m, c in configs.items()},
                                    "command": command(argv), "report": report, "invocations": invocations,
                                    "hardware": {"start": start, "end": end}, "runs": results}, indent=1)
    summary = earth_report.summary_markdown(t, command=command(argv), report=report, start=start, end=end,
                                            workers=args.jobs, configs=configs, results=results, figures=figures,
                                            out=out, invocations=invocations)
    write_text(out / "summary.md", summary)
    if not args.quiet:
        print(earth_report.markdown(t))
        print(f"wrote {out / 'summary.md'} ({done.seconds:.0f} s)")
    if done.interrupted:
        return 130
    return 1 if done.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
