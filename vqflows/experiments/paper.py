"""The paper's Tables 1 and 2 (and, with :mod:`.ablation`, Figure 6): ``vqflows benchmark`` and its summary.

The runs are a dataset × model × trial grid of run folders (:mod:`.grid`, :class:`~.grid.PaperRun`):
a rerun of the same command skips finished work, and a changed config retrains.

:func:`main` is ``vqflows benchmark`` without ``--earth`` or ``--images``::

    vqflows benchmark --table 1 --table 2 --jobs 2              # the full grid: 6 datasets × 6 models × 5 trials
    vqflows benchmark --datasets helix --models maf,vq-maf --trials 2 --epochs 5
    vqflows benchmark --ablation                                # Figure 6 (helix, vq-realnvp, K and partition)
    vqflows benchmark --tables-only --out benchmark             # rebuild tables from finished run folders

Output layout under ``--out``: ``runs/<dataset>/<model>/seed-<k>/`` (run folders), ``ablation/``,
``kde/`` (cached KDE bandwidths), ``tables/`` (``.md``, ``.csv``, ``.json``), ``figures/`` (PNG
and PDF), ``passes.json`` (one entry per invocation) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import datasets as _datasets
from ..checks import one_of, positive_int
from ..io import apply_overrides, claim, hardware, write_text
from ..runs import MODELS, RunConfig
from . import ablation, figures, tables
from .common import comma_list, command, duration, log_invocation
from .grid import plan, run_grid
from .runner import Report, Runner, add_runner_arguments, runner_from_args
from .tables import PAPER_DATASETS, PAPER_MODELS, Table

#: Trials per cell of Tables 1 and 2 (seeds 0..4), as in the paper.
TRIALS = 5

#: Overrides that the grid itself sets.
_GRID_KEYS = ("dataset", "model", "seed")


# ---------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqflows benchmark",
                                description="Reproduce the paper's Tables 1 and 2 and Figures 1, 4 and 6. "
                                "With --earth: the Earth-science study on the sphere (see --earth -h); "
                                "with --images digits|mnist: the image study with FID (see --images digits -h).")
    p.add_argument("--table", type=int, choices=(1, 2), action="append",
                   help="1: test log-likelihood; 2: also score samples with a KDE (repeatable; default both "
                        "unless --ablation is given alone)")
    p.add_argument("--ablation", action="store_true", help="Figure 6: helix, vq-realnvp, K and partition (3 trials)")
    p.add_argument("--datasets", help=f"comma-separated (default: {','.join(PAPER_DATASETS)})")
    p.add_argument("--models", help=f"comma-separated (default: {','.join(PAPER_MODELS)})")
    p.add_argument("--trials", type=int, help=f"seeds 0..N-1 (default {TRIALS}; ablation {ablation.TRIALS})")
    p.add_argument("--out", default="benchmark", help="output folder (default ./benchmark)")
    p.add_argument("--epochs", type=int, help="maximum epochs per run (default: the run config's; ablation 25)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="run config overrides, e.g. n=2000 lr=0.002")
    p.add_argument("--ablation-charts",
                   help=f"comma-separated K for the ablation (default {','.join(map(str, ablation.CHARTS))})")
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: rebuild tables and summary from the run folders (rerun the "
                        "training command instead to redraw figures; finished runs are skipped)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    add_runner_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """``vqflows benchmark``: 0 on success, 1 if some runs failed, 2 on bad arguments, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        runner = runner_from_args(args)
        with claim(args.out):
            return _run(args, argv, runner)
    except ValueError as e:
        print(f"vqflows benchmark: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the grid (tables, figures): finished runs are on disk already
        print("interrupted; rerun the same command to finish", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, argv: list[str], runner: Runner) -> int:
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(args.out)
    wanted = set(args.table or ([] if args.ablation else [1, 2]))
    names = comma_list(args.datasets, "datasets", _check_dataset) or list(PAPER_DATASETS)
    models = comma_list(args.models, "models", lambda m: one_of(m, MODELS, name="models")) or list(PAPER_MODELS)
    charts = [positive_int(int(k), name="ablation-charts")
              for k in comma_list(args.ablation_charts, "ablation-charts", _check_int)] or list(ablation.CHARTS)
    trials = positive_int(args.trials, name="trials") if args.trials is not None else None
    base = _base_config(args)

    report = Report()
    if not args.tables_only:
        runs = []
        if wanted:
            runs += plan(out, names, models, range(trials or TRIALS), base, sample_kde=2 in wanted)
        if args.ablation:
            ab_base = base if _epochs_given(args) else apply_overrides(base, {"epochs": ablation.EPOCHS})
            runs += ablation.plan(out, ab_base, charts=charts, seeds=range(trials or ablation.TRIALS))
        todo = sum(r.state() != "done" for r in runs)
        print(f"{len(runs)} runs in {out}: {len(runs) - todo} finished, {todo} to do on {runner.describe(todo)}",
              file=sys.stderr)
        report = run_grid(runs, runner)
        if report.interrupted:
            _record_pass(out, argv, started, time.perf_counter() - t0, report)
            print(f"interrupted: {report.count('trained')} run(s) finished in this pass are kept; rerun the same "
                  f"command to resume", file=sys.stderr)
            return 130

    # a plain --tables-only shows every finished run; a training pass shows its own grid
    explicit = not args.tables_only
    records = tables.collect(out, datasets=names if explicit or args.datasets else None,
                             models=models if explicit or args.models else None,
                             seeds=range(trials or TRIALS) if explicit or trials else None)
    if not args.tables_only and not wanted:
        records = []
    built = tables.benchmark_tables(records)
    ab_records = []
    if args.ablation or (args.tables_only and not args.table):
        ab_records = ablation.collect(out, charts=charts if args.ablation_charts or explicit else None,
                                      seeds=range(trials or ablation.TRIALS) if explicit or trials else None)
        built += ablation.tables(ab_records)
    written = [p for t in built for p in t.write(out / "tables")]

    drawn, problems = [], []
    if not args.tables_only and not args.no_figures:
        drawn, problems = _figures(records, ab_records, out / "figures")
    seconds = time.perf_counter() - t0
    passes = _record_pass(out, argv, started, seconds, report)
    summary = _write_summary(out, argv, seconds, passes, report, built, records + ab_records, drawn, problems)

    if not args.tables_only:
        print(f"{report.count('trained')} trained, {report.count('scored')} scored, {report.skipped} already "
              f"finished, {len(report.failures)} failed in {seconds:.0f} s", file=sys.stderr)
    for folder, error in report.failures:
        print(f"  failed: {folder}: {error}", file=sys.stderr)
    print(f"tables: {len(written)} files in {out / 'tables'}; figures: {len(drawn)} files; summary: {summary}")
    return 1 if report.failures else 0


def _check_dataset(name: str) -> None:
    if name not in _datasets.names() and not Path(name).is_file():
        known = ", ".join(map(repr, _datasets.names()))
        raise ValueError(f"datasets: expected one of {known} or a .npy/.csv/.txt file, got {name!r}")


def _check_int(text: str) -> None:
    try:
        int(text)
    except ValueError:
        raise ValueError(f"ablation-charts: expected integers, got {text!r}") from None


def _base_config(args: argparse.Namespace) -> RunConfig:
    keys = {item.split("=", 1)[0].strip() for item in args.set}
    clash = sorted(keys & set(_GRID_KEYS))
    if clash:
        raise ValueError(f"set: expected config fields other than {', '.join(_GRID_KEYS)} "
                         f"(use --datasets, --models, --trials), got {', '.join(clash)}")
    base = apply_overrides(RunConfig(), args.set)
    if args.epochs is not None:
        base = apply_overrides(base, {"epochs": positive_int(args.epochs, name="epochs")})
    return base


def _epochs_given(args: argparse.Namespace) -> bool:
    return args.epochs is not None or any(item.split("=", 1)[0].strip() == "epochs" for item in args.set)


def _figures(records: list[dict], ab_records: list[dict], folder: Path) -> tuple[list[Path], list[str]]:
    """Every figure the finished runs allow; a figure that fails is reported, not fatal."""
    steps = [(f"figure4-{flow}", lambda f=flow: figures.figure_samples(records, f, folder))
             for flow in ("realnvp", "maf", "nsf", "cef")]
    steps += [(f"figure1-{m}", lambda m=m: figures.figure_charts(records, m, folder))
              for m in dict.fromkeys(r["model"] for r in records) if m.startswith("vq-")]
    steps += [("training-curves", lambda: figures.figure_curves(records, folder)),
              ("figure6-ablation", lambda: ablation.figure(ab_records, folder))]
    drawn, problems = [], []
    for name, step in steps:
        try:
            drawn += step()
        except Exception as e:  # noqa: BLE001 - one unusable run folder must not cost the other figures
            problems.append(f"{name}: {type(e).__name__}: {e}")
            print(f"figure {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    return drawn, problems


def _record_pass(out: Path, argv: list[str], started: str, seconds: float, report: Report) -> list[dict]:
    """Append this invocation to ``passes.json`` and return all passes so far."""
    entry = {"command": command(argv), "started": started, "seconds": seconds, **report.to_dict()}
    entry.setdefault("trained", 0)
    entry.setdefault("scored", 0)
    return log_invocation(out / "passes.json", entry)


def _write_summary(out: Path, argv: list[str], seconds: float, passes: list[dict], report: Report,
                   built: list[Table], records: list[dict], drawn: list[Path], problems: list[str]) -> Path:
    hw = hardware()
    trained_passes = [p for p in passes if p.get("trained") or p.get("scored")]
    compute = sum(float(r.get("train_seconds") or 0.0) for r in records)
    this = (f"{duration(seconds)} wall time; {report.count('trained')} runs trained, {report.count('scored')} "
            f"scored, {report.skipped} already finished, {len(report.failures)} failed") if report.total else \
        f"tables rebuilt from the run folders in {duration(seconds)}"
    lines = ["# vqflows benchmark", "",
             f"Command: `{command(argv)}`", "",
             f"- this command: {this}",
             (f"- all passes that trained or scored ({len(trained_passes)}): "
             f"{duration(sum(p['seconds'] for p in trained_passes))} wall time"),
             f"- training time summed over the {len(records)} runs in these tables: {duration(compute)}",
             f"- hardware: {hw['cpu']}, {hw['cpu_count']} CPUs; {hw['platform']}",
             (f"- software: Python {hw['python']}, torch {hw['torch']}, numpy {hw['numpy']}, "
             f"scikit-learn {hw['scikit-learn']}"), ""]
    for table in built:
        lines += [table.to_markdown(), ""]
    if report.failures:
        lines += ["## Failed runs", "", *[f"- `{f}`: {e}" for f, e in report.failures], ""]
    if drawn or problems:
        lines += ["## Figures", "", *[f"- `{p.relative_to(out)}`" for p in drawn if p.suffix == ".png"],
                  *[f"- not drawn: {p}" for p in problems], ""]
    return write_text(out / "summary.md", "\n".join(lines))
