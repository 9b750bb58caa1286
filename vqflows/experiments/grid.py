"""The run grid behind the paper's Tables 1 and 2 and Figure 6: one run folder per dataset × model × trial.

Each :class:`PaperRun` is one run folder ``<out>/runs/<dataset>/<model>/seed-<k>`` trained by
:func:`vqflows.runs.train_run`. Its :meth:`~PaperRun.state` is read from the disk: ``"done"`` when
``metrics.json`` exists and ``config.json`` equals the run's config (and, for Table 2, its
``sample_kde.json`` exists), ``"score"`` when only the sample score is missing, ``"train"``
otherwise. So a rerun of the same command skips finished work, and a changed config retrains.
:mod:`.paper` (Tables 1 and 2) and :mod:`.ablation` (Figure 6) plan their runs here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import apply_overrides, read_json
from ..runs import RunConfig, train_run
from .kde import score_run
from .runner import Report, Runner, Task

#: Config fields that do not change a run's numbers, ignored when matching a finished run.
IGNORED_FIELDS = ("device", "threads")

#: Files of a run folder that describe a previous attempt; cleared before (re)training.
_STALE = ("metrics.json", "sample_kde.json", "error.json", "interrupted.json")


@dataclass(frozen=True)
class PaperRun:
    """One run: its config, its folder, whether its samples are scored (Table 2), and what is left to do."""

    config: RunConfig
    folder: Path
    sample_kde: bool = False
    kde_cache: Path | None = None
    stage: str = "train"

    def state(self) -> str:
        """``"done"``, ``"score"`` (trained, sample score missing) or ``"train"``."""
        if not (self.folder / "metrics.json").exists() or not config_matches(self.folder, self.config):
            return "train"
        if self.sample_kde and not (self.folder / "sample_kde.json").exists():
            return "score"
        return "done"

    def task(self) -> Task | None:
        """The runner's task for what is left of this run (``None`` when it is done)."""
        stage = self.state()
        if stage == "done":
            return None
        return Task(run_one, dataclasses.replace(self, stage=stage), self.folder, label=str(self.folder),
                    action="trained" if stage == "train" else "scored")


def run_folder(root: str | os.PathLike, dataset: str, model: str, seed: int) -> Path:
    """``<root>/runs/<dataset>/<model>/seed-<seed>`` (a dataset file is named by its stem)."""
    return Path(root) / "runs" / Path(dataset).stem / model / f"seed-{seed}"


def plan(root: str | os.PathLike, datasets: Sequence[str], models: Sequence[str], seeds: Iterable[int],
         base: RunConfig, *, sample_kde: bool = False) -> list[PaperRun]:
    """Runs for every dataset × model × seed, with ``base`` giving every other config field.

    Trials are the outer loop, so an interrupted grid already holds whole trials of every cell.
    """
    root = Path(root)
    return [PaperRun(run_config(base, d, m, s), run_folder(root, d, m, s),
                     sample_kde, root / "kde" if sample_kde else None)
            for s in seeds for d in datasets for m in models]


def run_config(base: RunConfig, dataset: str, model: str, seed: int) -> RunConfig:
    """``base`` with the grid's keys; a classical baseline keeps only what it depends on (the data and the
    seed; training settings reset to their defaults), so that every study shares its run folders."""
    config = apply_overrides(base, {"dataset": dataset, "model": model, "seed": seed})
    if config.is_baseline:
        config = RunConfig(dataset=dataset, model=model, seed=seed, n=base.n, device=base.device, threads=base.threads)
    return config


def config_matches(folder: Path, config: RunConfig) -> bool:
    """Whether ``folder/config.json`` holds ``config`` (up to :data:`IGNORED_FIELDS`)."""
    stored = read_json(Path(folder) / "config.json")
    if not isinstance(stored, dict):
        return False
    wanted = json.loads(json.dumps(config.to_dict()))
    for key in IGNORED_FIELDS:
        stored.pop(key, None)
        wanted.pop(key, None)
    return stored == wanted


def run_one(run: PaperRun, folder: Path) -> dict[str, Any]:
    """Train and/or score one run in this process; returns its record files (``metrics.json``, ``sample_kde.json``)."""
    files = {}
    if run.stage == "train":
        for name in _STALE:
            (folder / name).unlink(missing_ok=True)
        # seed the weight initialisation too, so a run does not depend on what its process ran before
        with torch.random.fork_rng():
            torch.manual_seed(run.config.seed)
            # no checkpoints: an unfinished run of a grid trains again from the start (the state above)
            files["metrics.json"] = train_run(run.config, folder, overwrite=True, resumable=False)
    if run.sample_kde:
        files["sample_kde.json"] = score_run(folder, run.kde_cache)
    return files


def run_grid(runs: Sequence[PaperRun], runner: Runner | None = None) -> Report:
    """Run the unfinished ``runs`` (see :class:`~.runner.Runner`; default: in this process)."""
    tasks = [t for t in (r.task() for r in runs) if t is not None]
    return (runner or Runner()).run(tasks, skipped=len(runs) - len(tasks))
