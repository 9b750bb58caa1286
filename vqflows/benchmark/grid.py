"""The grid of runs, dataset × model × trial, trained by parallel worker processes and resumable.

Each :class:`Job` is one run folder. Its :meth:`Job.state` is read from the disk: ``"done"``
when ``metrics.json`` exists and ``config.json`` equals the job's config (and, for Table 2, its
``sample_kde.json`` exists), ``"score"`` when only the sample score is missing, ``"train"``
otherwise. So a rerun of the same command skips finished work, and a changed config retrains.

Workers are spawned processes with one torch thread each (on a shared machine more threads per
worker only slow every worker down). They ignore Ctrl-C: the parent catches it, stops them and
returns; every run finished so far has its files on disk, written atomically by :mod:`vqflows.runs`.
A run that raises leaves ``error.json`` in its folder and the grid goes on.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..runs import RunConfig, train_run
from . import kde

#: The paper's datasets and models, in its tables' order.
PAPER_DATASETS = ("spherical", "helix", "lissajous", "twisted-eight", "knotted", "interlocked-circles")
PAPER_MODELS = ("realnvp", "vq-realnvp", "maf", "vq-maf", "cef", "vq-cef")

#: Config fields that do not change a run's numbers, ignored when matching a finished run.
IGNORED_FIELDS = ("device", "threads")

#: Files of a run folder that describe a previous attempt; cleared before (re)training.
_STALE = ("metrics.json", "sample_kde.json", "error.json", "interrupted.json")


@dataclass(frozen=True)
class Job:
    """One run: its config, its folder, and whether its samples are scored (Table 2)."""

    config: RunConfig
    folder: Path
    sample_kde: bool = False
    kde_cache: Path | None = None

    def state(self) -> str:
        """``"done"``, ``"score"`` (trained, sample score missing) or ``"train"``."""
        if not (self.folder / "metrics.json").exists() or not config_matches(self.folder, self.config):
            return "train"
        if self.sample_kde and not (self.folder / "sample_kde.json").exists():
            return "score"
        return "done"


@dataclass
class Outcome:
    """What a worker did with one job."""

    folder: str
    action: str  # "trained", "scored" or "failed"
    seconds: float
    error: str | None = None


@dataclass
class GridReport:
    """Counts of one pass over a grid; ``failures`` pairs folders with their error messages."""

    total: int = 0
    skipped: int = 0
    trained: int = 0
    scored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"total": self.total, "skipped": self.skipped, "trained": self.trained, "scored": self.scored,
                "failed": len(self.failures), "failures": [{"folder": f, "error": e} for f, e in self.failures],
                "interrupted": self.interrupted, "seconds": self.seconds}


def run_folder(root: str | os.PathLike, dataset: str, model: str, seed: int) -> Path:
    """``<root>/runs/<dataset>/<model>/seed-<seed>`` (a dataset file is named by its stem)."""
    return Path(root) / "runs" / Path(dataset).stem / model / f"seed-{seed}"


def plan(root: str | os.PathLike, datasets: Sequence[str], models: Sequence[str], seeds: Iterable[int],
         base: RunConfig, *, sample_kde: bool = False) -> list[Job]:
    """Jobs for every dataset × model × seed, with ``base`` giving every other config field.

    Trials are the outer loop, so an interrupted grid already holds whole trials of every cell.
    """
    root = Path(root)
    return [Job(base.with_overrides({"dataset": d, "model": m, "seed": s}), run_folder(root, d, m, s),
                sample_kde, root / "kde" if sample_kde else None)
            for s in seeds for d in datasets for m in models]


def config_matches(folder: Path, config: RunConfig) -> bool:
    """Whether ``folder/config.json`` holds ``config`` (up to :data:`IGNORED_FIELDS`)."""
    try:
        stored = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    wanted = json.loads(json.dumps(config.to_dict()))
    for key in IGNORED_FIELDS:
        stored.pop(key, None)
        wanted.pop(key, None)
    return stored == wanted


def execute(job: Job) -> Outcome:
    """Train and/or score one job in this process; an exception becomes ``error.json`` and a failed outcome."""
    t0 = time.perf_counter()
    stage = job.state()
    action = "trained" if stage == "train" else "scored"
    try:
        if stage == "train":
            for name in _STALE:
                (job.folder / name).unlink(missing_ok=True)
            # seed the weight initialisation too, so a run does not depend on what its process ran before
            with torch.random.fork_rng():
                torch.manual_seed(job.config.seed)
                train_run(job.config, job.folder, overwrite=True)
        if stage != "done" and job.sample_kde:
            stage = "score"
            kde.score_run(job.folder, job.kde_cache)
    except Exception as e:  # noqa: BLE001 - one broken run must not end the grid
        message = f"{type(e).__name__}: {e}"
        _write_error(job, stage, e)
        return Outcome(str(job.folder), "failed", time.perf_counter() - t0, message)
    return Outcome(str(job.folder), action, time.perf_counter() - t0)


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, progress: bool = True, desc: str = "runs") -> GridReport:
    """Run the unfinished ``jobs`` on ``workers`` processes (``1``: in this process).

    A progress bar on stderr counts runs and estimates the time left from the mean rate so far.
    Ctrl-C stops the workers and returns with ``interrupted=True``; finished runs stay on disk.
    """
    t0 = time.perf_counter()
    pending = [j for j in jobs if j.state() != "done"]
    report = GridReport(total=len(jobs), skipped=len(jobs) - len(pending))
    if not pending:
        return report
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc=desc, unit="run", file=sys.stderr, disable=not progress,
               smoothing=0, dynamic_ncols=True)

    def record(outcome: Outcome) -> None:
        if outcome.action == "failed":
            report.failures.append((outcome.folder, outcome.error or "unknown error"))
            bar.write(f"failed: {outcome.folder}: {outcome.error}", file=sys.stderr)
        elif outcome.action == "trained":
            report.trained += 1
        else:
            report.scored += 1
        bar.set_postfix_str(f"{len(report.failures)} failed" if report.failures else "", refresh=False)
        bar.update(1)

    try:
        if workers <= 1:
            _run_inline(pending, record)
        else:
            _run_pool(pending, min(workers, len(pending)), record)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
    return report


def _run_inline(jobs: Sequence[Job], record) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in jobs:
            record(execute(job))
    finally:
        torch.set_num_threads(threads)


def _run_pool(jobs: Sequence[Job], workers: int, record) -> None:
    # spawn: a fresh interpreter per worker, safe whatever threads torch has started in this one
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        futures = {pool.submit(execute, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                record(future.result())
            except Exception as e:  # noqa: BLE001 - a worker that died (e.g. killed for memory)
                _write_error(job, "worker", e)
                record(Outcome(str(job.folder), "failed", 0.0, f"{type(e).__name__}: {e}"))
    except KeyboardInterrupt:
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and end the running ones; their folders stay unfinished and are retrained."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _write_error(job: Job, stage: str, error: BaseException) -> None:
    job.folder.mkdir(parents=True, exist_ok=True)
    info = {"stage": stage, "type": type(error).__name__, "message": str(error),
            "traceback": "".join(traceback.format_exception(error)), "config": job.config.to_dict()}
    tmp = job.folder / "error.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, job.folder / "error.json")
