"""The job runner of every study: a list of :class:`Task` run in this process, a local process pool or on Dask.

A task is a pure function call ``fn(spec, folder) -> {file name: JSON object}``: it trains one run
(writing any model files into ``folder``) and returns its record files, which the driver writes
into ``folder`` atomically. Studies decide beforehand which runs are finished and hand over only
the others, so a rerun of the same command does only what is missing.

Backends (:class:`Runner`):

- ``jobs=1``: in this process, one torch (and BLAS/OpenMP) thread;
- ``jobs=N``: a local :class:`~concurrent.futures.ProcessPoolExecutor` of N spawned workers with
  ``threads`` torch (and BLAS/OpenMP) threads each. Workers ignore Ctrl-C (the driver stops them) and die with the
  driver, even when it is killed with SIGKILL (:func:`_bind_to_parent`);
- ``scheduler="tcp://host:8786"`` or ``client=Client(...)``: a running ``dask.distributed``
  scheduler (``pip install "vqflows[cluster]"``). Each run is one task; ``gpus_per_run=0.25``
  asks for a quarter of a ``GPU`` worker resource, so four runs share a GPU on workers started
  with ``--resources "GPU=1"``. Model files land in the run folders as the workers see them (a
  shared filesystem); the record files are written by the driver either way.

A run that raises leaves ``error.json`` (type, message, traceback) in its folder and the others go
on. A run whose worker is lost (killed, out of memory, a node gone) is resubmitted up to
``retries`` times; Dask itself also reschedules tasks of a lost worker
(``distributed.scheduler.allowed-failures``).

An HPC cluster through ``dask-jobqueue`` (SLURM shown; ``PBSCluster`` alike)::

    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(queue="gpu", cores=4, processes=4, memory="32GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"],
                           worker_extra_args=["--resources", "GPU=1"])
    cluster.scale(jobs=8)                     # 8 SLURM jobs of 4 workers each
    client = Client(cluster)
    Runner(client=client, gpus_per_run=0.25).run(tasks)
    # or from the command line, given the scheduler's address (client.scheduler.address):
    #   vqflows benchmark --table 1 --scheduler tcp://10.0.0.5:8786 --set device=cuda --gpus-per-run 0.25
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .. import io
from ..checks import positive_int

__all__ = ["Report", "Runner", "Task", "add_runner_arguments", "runner_from_args"]


@dataclass(frozen=True)
class Task:
    """One run: ``fn(spec, folder)`` returns ``{file name: JSON object}`` to write into ``folder``.

    ``fn`` must be a module-level function and ``spec`` picklable (they travel to the workers).
    ``cost`` weighs the run in the progress bar's ETA; ``action`` is what finishing it counts as in the
    :class:`Report` (``"trained"``, ``"scored"``, ...); ``error_file`` is where a failure is written.
    """

    fn: Callable[[Any, Path], dict[str, Any]]
    spec: Any
    folder: Path
    label: str
    cost: float = 1.0
    action: str = "trained"
    error_file: str = "error.json"


@dataclass
class Report:
    """What one pass over a list of tasks did; ``failures`` pairs labels with error messages."""

    total: int = 0
    skipped: int = 0
    done: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def count(self, action: str = "trained") -> int:
        return self.done.get(action, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "skipped": self.skipped, **{a: n for a, n in self.done.items()},
                "failed": len(self.failures), "failures": [{"run": r, "error": e} for r, e in self.failures],
                "interrupted": self.interrupted, "seconds": self.seconds}


@dataclass
class _Outcome:
    """A task's files, or its error; made in the worker."""

    files: dict[str, Any] | None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


def _call(fn: Callable, spec: Any, folder: Path, threads: int) -> _Outcome:
    """Run one task where it lands: its exceptions become an outcome, so that only a lost worker is retried.

    ``threads`` bounds torch's threads and, for the task, those of the BLAS and OpenMP libraries under
    NumPy, SciPy and scikit-learn (the Gaussian mixtures, the kernel densities): by default they take every
    core, and N workers each doing so oversubscribe the machine (a mixture's fit beside a busy worker took
    twice as long: docs/results.md)."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with threadpool_limits(limits=threads) if threads else nullcontext():
            files = fn(spec, folder)
    except Exception as e:  # noqa: BLE001 - one broken run must not end the grid
        return _Outcome(None, f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e)),
                        time.perf_counter() - t0)
    return _Outcome(files, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ worker lifetime


_STARTED = None  # in a pool worker: the queue on which it announces each run it starts


def _pool_call(index: int, fn: Callable, spec: Any, folder: Path, threads: int) -> _Outcome:
    _STARTED.put(index)
    return _call(fn, spec, folder, threads)


def _bind_to_parent(parent: int, threads: int, started) -> None:
    """Pool worker initializer: ``threads`` torch threads, Ctrl-C left to the driver, and death with the driver.

    On Linux the kernel sends SIGKILL when the driver dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere,
    and in case the driver died before that call, a daemon thread polls the parent's process id.
    """
    global _STARTED
    _STARTED = started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    torch.set_num_threads(threads or torch.get_num_threads())


# ------------------------------------------------------------------------------------------ the runner


@dataclass
class Runner:
    """Where tasks run: ``jobs`` local processes, or a Dask ``scheduler`` address / ``client``.

    Attributes:
        jobs: local worker processes (``1``: in this process).
        scheduler: address of a running ``dask.distributed`` scheduler; ``client`` takes a
            :class:`dask.distributed.Client` instead (e.g. of a ``dask_jobqueue`` cluster).
        gpus_per_run: the ``GPU`` worker resource each Dask task asks for (``0``: none).
        threads: torch threads per run, and BLAS/OpenMP threads (NumPy, SciPy, scikit-learn) during it
            (``0``: the libraries' defaults).
        retries: resubmissions of a run whose worker was lost.
        progress: a progress bar with the ETA on stderr.
    """

    jobs: int = 1
    scheduler: str | None = None
    client: Any = None
    gpus_per_run: float = 0.0
    threads: int = 1
    retries: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        positive_int(self.jobs, name="jobs")
        positive_int(self.threads, name="threads", minimum=0)
        positive_int(self.retries, name="retries", minimum=0)
        if isinstance(self.gpus_per_run, bool) or not isinstance(self.gpus_per_run, (int, float)) \
                or not self.gpus_per_run >= 0:
            raise ValueError(f"gpus-per-run: expected a number >= 0, got {self.gpus_per_run!r}")
        if self.gpus_per_run and self.scheduler is None and self.client is None:
            raise ValueError(f"gpus-per-run: expected --scheduler (a Dask cluster) with it, got {self.gpus_per_run}")

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.client is not None

    def describe(self, pending: int) -> str:
        """``"2 worker(s)"`` or ``"Dask at tcp://..."``, for the driver's first line."""
        if self.distributed:
            return f"Dask at {self.scheduler or self.client.scheduler.address}"
        return f"{min(self.jobs, max(pending, 1))} worker(s)"

    def run(self, tasks: Sequence[Task], *, skipped: int = 0, desc: str = "runs") -> Report:
        """Run ``tasks`` (the unfinished runs; ``skipped`` counts the finished ones) and write their files.

        Ctrl-C stops the workers and returns with ``interrupted=True``; files of finished runs stay.
        """
        t0 = time.perf_counter()
        report = Report(total=len(tasks) + skipped, skipped=skipped)
        if not tasks:
            return report
        bar = tqdm(total=sum(t.cost for t in tasks), desc=f"{desc}: 0/{len(tasks)}", file=sys.stderr,
                   disable=not self.progress, smoothing=0, dynamic_ncols=True,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}")

        def record(task: Task, outcome: _Outcome) -> None:
            if outcome.files is not None:
                for name, obj in outcome.files.items():
                    io.write_json(task.folder / name, obj)
                report.done[task.action] = report.done.get(task.action, 0) + 1
            else:
                io.write_json(task.folder / task.error_file, {"run": task.label, "action": task.action,
                                                              "error": outcome.error,
                                                              "traceback": outcome.traceback, "spec": task.spec})
                report.failures.append((task.label, outcome.error or "unknown error"))
                bar.write(f"failed: {task.label}: {outcome.error}", file=sys.stderr)
            finished = sum(report.done.values()) + len(report.failures)
            bar.set_description_str(f"{desc}: {finished}/{len(tasks)}", refresh=False)
            bar.set_postfix_str(f"{len(report.failures)} failed" if report.failures else "", refresh=False)
            bar.update(task.cost)

        try:
            if self.distributed:
                self._run_dask(tasks, record)
            elif self.jobs == 1 or len(tasks) == 1:
                self._run_inline(tasks, record)
            else:
                self._run_pool(tasks, record)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            bar.close()
            report.seconds = time.perf_counter() - t0
        return report

    def _run_inline(self, tasks: Sequence[Task], record) -> None:
        threads = torch.get_num_threads()
        try:
            for task in tasks:
                record(task, _call(task.fn, task.spec, task.folder, self.threads))
        finally:
            torch.set_num_threads(threads)

    def _run_pool(self, tasks: Sequence[Task], record) -> None:
        # A dead worker breaks the whole pool and every unfinished run with it. The runs that had started
        # are suspects: they are rerun one at a time on a pool of one worker, so that a death is charged to
        # the run that caused it (up to ``retries`` times); the runs that had not started go back uncharged.
        todo, suspects = list(range(len(tasks))), []
        while todo:
            started, lost = self._pool_pass(tasks, todo, self.jobs, record)
            suspects += [i for i in lost if i in started]
            todo = [i for i in lost if i not in started]
        attempts = dict.fromkeys(suspects, 0)
        while suspects:
            _, lost = self._pool_pass(tasks, suspects, 1, record, one_at_a_time=True)
            for i in lost[:1]:  # the run that was on the worker when it died
                attempts[i] += 1
                if attempts[i] > self.retries:
                    record(tasks[i], _Outcome(None, f"worker lost {attempts[i] + 1} times (killed, or out of memory)"))
            suspects = [i for i in lost if attempts[i] <= self.retries]

    def _pool_pass(self, tasks: Sequence[Task], indices: list[int], workers: int, record, *,
                   one_at_a_time: bool = False) -> tuple[set[int], list[int]]:
        """Run ``indices`` on a fresh pool; returns (the runs that started, the runs lost with a broken pool)."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: safe whatever threads/CUDA we hold
        started = context.SimpleQueue()
        pool = ProcessPoolExecutor(min(workers, len(indices)), mp_context=context, initializer=_bind_to_parent,
                                   initargs=(os.getpid(), self.threads, started))
        lost: list[int] = []
        try:
            batches = [[i] for i in indices] if one_at_a_time else [indices]
            for n, batch in enumerate(batches):
                futures = {pool.submit(_pool_call, i, tasks[i].fn, tasks[i].spec, tasks[i].folder, self.threads): i
                           for i in batch}
                for future in as_completed(futures):
                    try:
                        record(tasks[futures[future]], future.result())
                    except (BrokenProcessPool, CancelledError):
                        lost.append(futures[future])
                if lost and one_at_a_time:
                    lost += [i for b in batches[n + 1:] for i in b]
                    break
        except KeyboardInterrupt:
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        begun = set()
        while not started.empty():
            begun.add(started.get())
        return begun, lost

    def _run_dask(self, tasks: Sequence[Task], record) -> None:
        try:
            from dask.distributed import Client  # deferred: optional extra [cluster]
            from dask.distributed import as_completed as dask_completed  # deferred: optional extra [cluster]
        except ImportError as e:
            raise ValueError(f"scheduler: expected dask.distributed to be installed (pip install "
                             f"'vqflows[cluster]'), got {type(e).__name__}: {e}") from None
        client = self.client
        if client is None:
            try:
                client = Client(self.scheduler, timeout=30)
            except OSError as e:
                raise ValueError(f"scheduler: expected the address of a running dask scheduler, got "
                                 f"{self.scheduler!r} ({e})") from None
        resources = {"GPU": self.gpus_per_run} if self.gpus_per_run else None
        attempts: dict[int, int] = {}

        def submit(i: int):
            task = tasks[i]
            return client.submit(_call, task.fn, task.spec, task.folder, self.threads, pure=False,
                                 key=f"{task.label}-{attempts.get(i, 0)}-{os.getpid()}-{time.time_ns()}",
                                 resources=resources, retries=self.retries)

        futures = {submit(i): i for i in range(len(tasks))}
        running = dask_completed(list(futures))
        try:
            for future in running:
                i = futures.pop(future)
                try:
                    outcome = future.result()
                except Exception as e:  # noqa: BLE001 - KilledWorker, lost connection: resubmit
                    attempts[i] = attempts.get(i, 0) + 1
                    if attempts[i] <= self.retries:
                        retry = submit(i)
                        futures[retry] = i
                        running.add(retry)
                        continue
                    outcome = _Outcome(None, f"worker lost {attempts[i]} times: {type(e).__name__}: {e}")
                record(tasks[i], outcome)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise
        finally:
            if self.client is None:
                client.close()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued runs and end the running ones; their folders stay unfinished and are rerun next time."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------- command line


def add_runner_arguments(parser: argparse.ArgumentParser, *, jobs: int | None = None) -> None:
    """``--jobs``, ``--scheduler``, ``--gpus-per-run`` and ``--quiet`` (``jobs``: the default, CPU count if None)."""
    default = jobs if jobs is not None else (os.cpu_count() or 1)
    parser.add_argument("--jobs", type=int, default=default,
                        help=f"local worker processes, one torch thread each (default {default})")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on a dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (pip install "
                             "'vqflows[cluster]'); run folders must be on a filesystem the workers share")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, metavar="F",
                        help="with --scheduler: GPU worker resource per run (0.25: four runs share a GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def runner_from_args(args: argparse.Namespace, *, threads: int = 1) -> Runner:
    """The :class:`Runner` of parsed :func:`add_runner_arguments`."""
    return Runner(jobs=args.jobs, scheduler=args.scheduler, gpus_per_run=args.gpus_per_run, threads=threads,
                  progress=not args.quiet)
