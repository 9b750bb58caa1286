"""The image study (paper §5.3, Figure 5) on the shared job runner: plan, run, resume and report.

Each run is :func:`vqflows.images.study.train_image_run` for one model and trial; its record (the
FID and bits/dim curve) is ``<out>/runs/<model>-trial<t>.json`` with its final samples beside it.
A rerun trains only the runs without a finished record; a finished record made with other
settings is refused (use a new ``--out``). The report (:func:`vqflows.images.report.write_report`)
is written after every invocation, also an interrupted one.

Command line (``vqflows benchmark --images digits -h``)::

    vqflows benchmark --images digits --jobs 2 --out image-study/digits
    vqflows benchmark --images mnist --data-dir DIR --device cuda --jobs 3 --threads 4
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checks import one_of, positive_int
from ..images import report, study
from ..images.data import DATASETS, load_images
from ..images.fid import ClassifierFID, default_classifier_path
from ..images.models import IMAGE_MODELS
from ..io import claim, read_json, write_json
from ..training import resolve_device
from .runner import Runner, Task, add_runner_arguments

__all__ = ["ImageRun", "main", "run_image_study", "run_one"]


@dataclass(frozen=True)
class ImageRun:
    """One run of the study: ``model``'s trial ``trial`` with ``config``, and where its data come from."""

    model: str
    trial: int
    config: study.StudyConfig
    device: str = "cpu"
    data_dir: str | None = None
    download: bool = False
    classifier: str | None = None
    verbose: bool = False


@functools.lru_cache(maxsize=2)
def _inputs(dataset: str, data_dir: str | None, seed: int, download: bool, classifier: str | None):
    """The images and the FID network, loaded once per worker process."""
    splits = load_images(dataset, data_dir, seed=seed, download=download)
    return splits, ClassifierFID.load(splits.name, path=classifier)


def run_one(run: ImageRun, folder: Path) -> dict[str, Any]:
    """Train one run (its record is also written into ``folder`` after every evaluation); returns its record file."""
    splits, fid = _inputs(run.config.dataset, run.data_dir, run.config.data_seed, run.download, run.classifier)
    path = folder / study.run_path("", run.model, run.trial).name
    record = study.train_image_run(run.model, run.trial, run.config, splits, fid, device=run.device, path=path,
                                   log=print if run.verbose else None)
    return {path.name: record}


def _finished(path: Path, config: study.StudyConfig) -> bool:
    record = read_json(path)
    if record is None or not record.get("finished"):
        return False
    if record.get("config") != config.to_dict():
        raise ValueError(f"out: expected the runs in {path.parent} to use the same settings, got a finished "
                         f"{path.name} with different ones (use a new --out or delete it)")
    return True


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(resolve_device(device))


def run_image_study(dataset: str = "digits", data_dir: str | None = None, models: Sequence[str] = IMAGE_MODELS,
                    trials: int = 3, epochs: int | None = None, eval_every: int | None = None,
                    charts: int | None = None, latent: int | None = None, device: str = "cpu",
                    out: str | Path = "image-study", jobs: int = 1, *, download: bool = False,
                    overrides: dict[str, Any] | Sequence[str] | None = None, threads: int = 1,
                    runner: Runner | None = None, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run (or resume) the image study into the folder ``out`` and write its report.

    Settings are :meth:`~vqflows.images.StudyConfig.defaults` for ``dataset``, then ``epochs``,
    ``eval_every``, ``charts``, ``latent`` when given, then ``overrides`` (``key=value`` strings or a
    dict). Runs go to ``runner`` (default: ``jobs`` local processes of ``threads`` torch threads
    each). On Ctrl-C the finished runs are reported and ``KeyboardInterrupt`` is re-raised.

    Writes ``study.json``, ``runs/*.json``, ``summary.{md,csv,json}``, ``fid_curves.{png,pdf}`` and
    ``samples/*.png`` (see :mod:`vqflows.images.report`). Returns the summary (as ``summary.json``).
    """
    one_of(dataset, DATASETS, name="dataset")
    if isinstance(models, str):
        models = [models]
    models = [one_of(m, IMAGE_MODELS, name="models") for m in models]
    if not models or len(set(models)) != len(models):
        raise ValueError(f"models: expected distinct names from {', '.join(IMAGE_MODELS)}, got {models!r}")
    trials = positive_int(trials, name="trials")
    runner = runner or Runner(jobs=jobs, threads=threads, progress=False)
    device = _resolve_device(device)
    config = study.StudyConfig.defaults(dataset, subset=data_dir is None)
    given = {"epochs": epochs, "eval_every": eval_every, "charts": charts, "latent": latent}
    config = config.with_overrides({k: v for k, v in given.items() if v is not None})
    if overrides:
        config = config.with_overrides(overrides)
    say = log or (lambda message: None)

    out = Path(out)
    splits = load_images(dataset, data_dir, seed=config.data_seed, download=download)
    classifier = default_classifier_path(splits.tag)
    t0 = time.perf_counter()
    fid = ClassifierFID.load_or_fit(splits, path=classifier)
    say(f"FID classifier {classifier} (test accuracy {fid.test_accuracy:.4f}, {time.perf_counter() - t0:.1f} s)")
    if config.inception:  # the test images' Inception statistics, computed once here and read by every run
        t0 = time.perf_counter()
        study.inception_reference(study.inception_fid(splits, device), splits)
        say(f"Inception statistics of the {len(splits.test)} test images ({time.perf_counter() - t0:.0f} s)")
    with claim(out):
        write_json(out / "study.json", {"config": config.to_dict(), "models": models, "trials": trials,
                                        "device": device, "jobs": runner.jobs, "classifier": str(classifier)},
                   indent=1)
        runs = [ImageRun(m, t, config, device, None if data_dir is None else str(data_dir), download,
                         str(classifier), log is not None) for m in models for t in range(trials)]
        folder = study.run_path(out, models[0], 0).parent
        tasks = [Task(run_one, r, folder, label=f"{r.model} trial {r.trial}", error_file=f"{r.model}-trial{r.trial}"
                      ".error.json") for r in runs if not _finished(study.run_path(out, r.model, r.trial), config)]
        say(f"{len(runs) - len(tasks)} of {len(runs)} runs already finished in {out}; training {len(tasks)}")
        t_start = time.perf_counter()
        done = runner.run(tasks, skipped=len(runs) - len(tasks), desc="images")
        failures = [f"{label}: {error}" for label, error in done.failures]
        for failure in failures:
            say(f"failed: {failure}")
        if done.interrupted:
            say("interrupted: reporting the finished runs")
        summary = report.write_report(out, splits, fid, models=models, trials=trials, config=config,
                                      wall_seconds=time.perf_counter() - t_start, failures=failures)
    if done.interrupted:
        raise KeyboardInterrupt
    return summary


# -- command line -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vqflows benchmark --images",
        description="Image study (paper §5.3): RealNVP and MAF with and without VQ charts; classifier FID and "
                    "bits/dim over training, mean ± std over trials.")
    p.add_argument("--images", choices=DATASETS, default="digits", help="dataset (default digits)")
    p.add_argument("--data-dir", default=None, help="folder holding the MNIST IDX files")
    p.add_argument("--download", action="store_true", help="fetch MNIST with torchvision if missing")
    p.add_argument("--models", nargs="+", default=list(IMAGE_MODELS),
                   help=f"models, space- or comma-separated (default: {' '.join(IMAGE_MODELS)})")
    p.add_argument("--trials", type=int, default=3, help="independent trials per model (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the dataset's)")
    p.add_argument("--eval-every", type=int, default=None, help="epochs between evaluations")
    p.add_argument("--charts", type=int, default=None, help="K of the VQ models")
    p.add_argument("--latent", type=int, default=None, help="code dimension of the VQ autoencoder")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="further StudyConfig overrides, e.g. hidden=128,128 lr=5e-4")
    p.add_argument("--out", default=None, help="study folder (default image-study/<images>)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    add_runner_arguments(p, jobs=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: run the image study and print its summary table; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    out = Path(args.out or f"image-study/{args.images}")
    try:
        runner = Runner(jobs=args.jobs, scheduler=args.scheduler, gpus_per_run=args.gpus_per_run,
                        threads=args.threads, progress=False)
        summary = run_image_study(args.images, args.data_dir, models, args.trials, args.epochs, args.eval_every,
                                  args.charts, args.latent, args.device, out, download=args.download,
                                  overrides=args.set, runner=runner, log=None if args.quiet else print)
    except KeyboardInterrupt:
        print(f"interrupted: finished runs are kept in {out}; rerun the same command to resume", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    for failure in summary.get("failures", []):
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if summary.get("failures") else 0
