"""The settings of a run (:class:`RunConfig`) and the state of a run folder, importable without torch.

This module imports only the standard library, NumPy and the light parts of the package
(:mod:`vqflows.presets`, :mod:`vqflows.io`, :mod:`vqflows.checks`), so that the command line checks
its arguments, the ``--set`` overrides and the output folder before it pays for torch: a mistake
is answered in a fraction of a second. Training, evaluation and the run folders themselves live in
:mod:`vqflows.runs`, which re-exports everything here.

Example:
    >>> config = RunConfig(dataset="helix", model="vq-maf").with_overrides(["charts=16", "lr=0.001"])
    >>> config.charts, config.lr, config.is_vq
    (16, 0.001, True)
    >>> RunConfig(charts="many")
    Traceback (most recent call last):
    ...
    ValueError: charts: expected a positive int or 'auto', got 'many'
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import presets
from .checks import one_of, positive_int
from .checks import seed as check_seed
from .io import apply_overrides, read_json

# the training settings and their names, declared once (torch-free); re-exported here
from .training.config import MEMBERSHIPS as MEMBERSHIPS
from .training.config import OBJECTIVES as OBJECTIVES
from .training.config import TrainConfig

#: the training defaults, which a run's training fields take (:meth:`RunConfig.training`)
_TRAIN = TrainConfig()

#: Model names: the presets of base flows and their VQ versions (:mod:`vqflows.presets`; the image presets
#: belong to the image study).
MODELS = tuple(name for name in presets.names() if not name.startswith("image-")) + presets.BASELINES

#: Flows for which ``partition="auto"`` (the run default) trains flows from the ``K/4``-, ``K/2``-, ``K``- and
#: ``2K``-component Gaussian mixtures, two draws of each (each counts epoch 0 in its early stopping, so each ends at
#: or above its mixture on validation) and stacks them into one :class:`~vqflows.ensemble.VQFlowEnsemble` with
#: weights fitted on validation; other flows take the VQ-AE (:func:`vqflows.selection.partition_candidates`, measured in
#: docs/results.md).
AUTO_FLOWS = ("maf",)


def stacks(flow: str, partition: str) -> bool:
    """Whether a model of ``flow`` with ``partition`` is the stacked ensemble of :func:`vqflows.selection.partition_candidates`."""
    return partition == "auto" and flow in AUTO_FLOWS


#: The stacked default's members: two draws of each mixture size (eight flows), each stopping after 5 epochs
#: without a better validation score, where a single model waits 10: the stack averages away what the longer
#: wait gains, and the second draws lowered the knot's gap from 0.055 to under 0.05 (docs/results.md).
STACK_REPEATS, STACK_PATIENCE = 2, 5


def default_repeats(repeats: int | None, stacked: bool) -> int:
    """``repeats``, or where it is ``None`` (the default): :data:`STACK_REPEATS` for the stacked default, else 1."""
    return repeats if repeats is not None else STACK_REPEATS if stacked else 1


def check_repeats(repeats: int | None, stacked: bool, want: str, got: str) -> None:
    """Refuse ``repeats`` below 1, or other than 1 where the model is not the stacked default (it would be
    ignored); ``want`` and ``got`` spell the stacked default's settings and the model's in the message."""
    if repeats is not None:
        positive_int(repeats, name="repeats")
    if repeats not in (None, 1) and not stacked:
        raise ValueError(f"repeats: expected 1 unless {want} (the stacked default), got {repeats!r} with {got}")


def default_patience(patience: int | None, stacked: bool) -> int:
    """``patience``, or where it is ``None`` (the default): :data:`STACK_PATIENCE` for the members of the stacked
    default, else the training default (10)."""
    return patience if patience is not None else STACK_PATIENCE if stacked else _TRAIN.early_stopping.patience


#: Each member of the stacked default sums each point's :data:`CURVE_TOP` nearest charts in its training objective
#: where the data are a curve at the scale of ``charts`` cells (:func:`vqflows.charts.local_dimension` below
#: :data:`CURVE_DIMENSION`: about 1.1 on the paper's curves, 2.0 on its shell), the training default (4) elsewhere:
#: along a curve two charts overlap at a point, and the members train faster at the same gaps (docs/results.md).
CURVE_TOP, CURVE_DIMENSION = 2, 1.5


def default_top(top: int | None) -> int:
    """``top``, or where it is ``None`` the training default (4); the stacked default resolves ``None`` from
    its data instead (:func:`vqflows.selection.stack_top`)."""
    return top if top is not None else _TRAIN.top


#: Chart counts tried by ``charts="auto"`` (:func:`vqflows.selection.select_charts`).
CANDIDATES = (8, 16, 32, 64)

#: Files a run writes into its folder (besides ``model/``); ``overwrite`` removes exactly these.
RUN_FILES = ("run.json", "config.json", "data.json", "metrics.json", "interrupted.json", "history.json",
             "history.csv", "checkpoint.pt")
#: ``run.json``: what marks a folder as a vqflows run, and records the run's fingerprint.
MARKER, FORMAT = "run.json", "vqflows-run"


class SettingError(ValueError):
    """A run setting does not fit the data; names the setting and a value that fits.

    ``str(error)`` speaks of settings as ``key=value`` (as :meth:`RunConfig.with_overrides` takes
    them); :meth:`cli` says the same with the command line's ``--set key=value``.
    """

    def __init__(self, message: str, key: str, fits: Any) -> None:
        self.template, self.key, self.fits = message, key, fits
        super().__init__(message.format(change=f"{key}={fits}"))

    def cli(self) -> str:
        """The message with the change spelled as a command-line option."""
        return self.template.format(change=f"--set {self.key}={self.fits}")


@dataclass
class RunConfig:
    """Everything that defines a run (one dataset, one model, one seed). Defaults are the library's choices.

    Arguments:
        dataset: a built-in name (``vqflows datasets``) or a path to a ``.npy``/``.csv``/``.txt`` file.
        model: one of :data:`MODELS`: ``realnvp``, ``maf``, ``nsf``, ``cef``, ``sphere`` and their ``vq-`` versions,
            and the classical baselines ``gmm`` and ``kde`` (:mod:`vqflows.baselines`; fitted, not trained).
        seed: seeds the data draw, the split, the initial weights and training.
        n: points drawn from a built-in set (``None``: 10,000), or rows taken from a file (``None``: all).
        epochs: the most flow epochs; ``patience``: epochs without a better validation score before stopping
            (``None``: 10, and 5 for each member of the stacked default, :data:`STACK_PATIENCE`).
        batch_size, lr: Adam's batch size and learning rate.
        charts: the number of charts ``K``, or ``"auto"`` to choose it on validation among :data:`CANDIDATES`.
        partition: how the charts are found: ``"auto"`` (the default; for ``vq-maf`` eight flows, two from each of
            the Gaussian mixtures of ``charts`` times 1/4, 1/2, 1 and 2 components, stacked into one
            :class:`~vqflows.ensemble.VQFlowEnsemble` with weights fitted on validation, see
            :func:`vqflows.runs.auto_candidates`; the VQ autoencoder for other flows), ``"vqae"`` (the
            paper's VQ autoencoder) or another of :data:`vqflows.presets.PARTITIONS` (``"kmeans"``, ``"gmm"``).
        repeats: with ``partition="auto"`` (``vq-maf``), members per mixture size, each drawn from its own seed
            (``None``: 2, eight members, :data:`STACK_REPEATS`; 1 halves the cost).
        latent: the VQ autoencoder's code dimension.
        m, eps: chart membership: the ``m`` nearest codes, enlarged by ``eps`` (``None``: 2 for ``vq-cef``, else 1).
        chart_epochs: epochs of the chart stage.
        transforms, hidden: the flow's number of transforms and hidden width (two layers).
        manifold_dim: the learned manifold's dimension for ``cef`` models.
        frames: give each chart its own fitted frame.
        flow_options: further keyword arguments of the flow.
        objective: ``"mixture"`` (the default) or ``"cells"`` (the paper's eq. 17); see :func:`vqflows.fit`.
        top: charts per point of the mixture objective (``None``: 4; for the members of the stacked default,
            2 where the data are a curve, :data:`CURVE_TOP`).
        learn_weights: learn the chart weights with the flow.
        membership: ``"hard"`` or ``"soft"`` (see :func:`vqflows.fit`).
        compile: run the loss through ``torch.compile``.
        device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        threads: torch threads while training (``0``: torch's default).
    """

    dataset: str = "helix"
    model: str = "vq-maf"
    seed: int = 0
    n: int | None = None  # None: 10,000 points of a built-in set, every row of a file
    epochs: int = _TRAIN.epochs
    patience: int | None = None  # None: 10, and 5 for the members of the stacked default (default_patience)
    # batches of 512 at 2e-3: the same test gaps as 128 at 1e-3 within the seeds' spread, at a fraction
    # of the cost per epoch (docs/objective.md)
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    charts: int | str = 32  # or "auto": the best of CANDIDATES on validation
    partition: str = "auto"
    repeats: int | None = None  # members per mixture size of partition="auto", each from its own seed (None: 2)
    latent: int = 3
    m: int | None = None  # None: 2 for vq-cef (overlapping charts), else 1 (hard boundaries)
    eps: float = 0.0
    chart_epochs: int = _TRAIN.chart_epochs
    transforms: int = 5
    hidden: int = 64
    manifold_dim: int = 2
    frames: bool = True
    flow_options: dict = field(default_factory=dict)
    objective: str = _TRAIN.objective  # "cells" with charts=32 batch_size=128 lr=0.001: the paper's Table 1 as published
    top: int | None = None  # None: 4, and for the stacked default's members 2 on curves (CURVE_TOP)
    learn_weights: bool = _TRAIN.learn_weights
    membership: str = _TRAIN.membership
    compile: bool = _TRAIN.compile  # torch.compile the loss: pays on long runs and GPUs, costs tens of seconds cold
    device: str = "cpu"
    threads: int = _TRAIN.threads  # small flows are bound by per-operation overhead: one thread is as fast and never oversubscribes

    def __post_init__(self) -> None:
        one_of(self.model, MODELS, name="model")
        one_of(self.partition, (*presets.PARTITIONS, "auto"), name="partition")
        if isinstance(self.charts, str) and self.charts != "auto":
            raise ValueError(f"charts: expected a positive int or 'auto', got {self.charts!r}")
        if self.m is None:
            # an embedding flow's chart surface must reach past its cell to meet its neighbours'
            self.m = 2 if self.model == "vq-cef" else 1
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset: expected a name or a path, got {self.dataset!r}")
        # counts are checked here, before any data is loaded; the training fields as training checks them
        for key, least in (*((("charts", 1),) if self.charts != "auto" else ()), ("latent", 1), ("m", 1),
                           ("transforms", 1), ("hidden", 1), ("manifold_dim", 1)):
            positive_int(getattr(self, key), name=key, minimum=least)
        check_repeats(self.repeats, self.stacked, "partition='auto' with model='vq-maf'",
                      f"partition={self.partition!r}, model={self.model!r}")
        check_seed(self.seed)
        if self.n is not None:
            positive_int(self.n, name="n")
        self.training()
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (
                self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps: expected a finite number >= 0, got {self.eps!r}")

    @property
    def flow(self) -> str:
        """The base flow's name (``model`` without ``vq-``)."""
        return self.model.removeprefix("vq-")

    @property
    def is_vq(self) -> bool:
        """Whether the model has charts (a ``vq-`` model)."""
        return self.model.startswith("vq-")

    @property
    def stacked(self) -> bool:
        """Whether the run trains the stacked ensemble (``vq-maf`` with ``partition="auto"``)."""
        return self.is_vq and stacks(self.flow, self.partition)

    @property
    def members(self) -> int:
        """Members per mixture size of the stacked ensemble (``repeats`` resolved; 1 for other models)."""
        return default_repeats(self.repeats, self.stacked)

    @property
    def is_baseline(self) -> bool:
        """Whether the model is a classical baseline (:mod:`vqflows.baselines`), fitted without training."""
        return self.model in presets.BASELINES

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> RunConfig:
        """A copy with ``key=value`` overrides (:func:`vqflows.io.apply_overrides`); unknown keys and values
        of the wrong type raise ``ValueError``."""
        return apply_overrides(self, overrides)

    def check_size(self, train_points: int) -> None:
        """Refuse more charts than training points, naming the setting and a count that fits.

        Raises:
            SettingError: ``charts`` (a fixed ``K``) exceeds ``train_points`` on a ``vq-`` model.
        """
        if not self.is_vq or self.charts == "auto" or self.charts <= train_points:
            return
        fits = max([k for k in (1, 2, 4, *CANDIDATES) if k <= max(train_points, 1)])
        raise SettingError(f"dataset: expected at least {self.charts} training points, one per chart (charts="
                           f"{self.charts} sets it), got {train_points}; fewer charts fit, e.g. {{change}}",
                           "charts", fits)

    def build_model(self, features: int, charts: int | None = None, partition: str | None = None):
        """The untrained model of this run for data in ``R^features`` (its preset, so that it saves and loads);
        ``charts`` and ``partition`` override the config's (needed when they are ``"auto"``)."""
        charts = charts if charts is not None else self.charts
        partition = partition if partition is not None else self.partition
        if charts == "auto":
            charts = max(CANDIDATES)
        if partition == "auto":  # a run trains the candidates (auto_candidates); a single model is the VQ-AE's
            partition = "vqae"
        return presets.create(self.model, features=features, charts=charts, partition=partition,
                              latent=self.latent, m=self.m if self.is_vq else 1, eps=self.eps,
                              transforms=self.transforms, hidden_features=[self.hidden, self.hidden],
                              manifold_dim=self.manifold_dim, frames=self.frames, flow_options=self.flow_options)

    def training(self) -> TrainConfig:
        """The run's training settings (:class:`~vqflows.training.TrainConfig`): the fields of the same
        names, ``patience`` that of early stopping (:func:`default_patience` where it is ``None``);
        ``ValueError`` for a setting training refuses."""
        return TrainConfig.from_record({**self.to_dict(), "patience": default_patience(self.patience, self.stacked),
                                        "top": default_top(self.top)})

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (what a run folder's ``config.json`` holds)."""
        return dataclasses.asdict(self)


def run_state(out: str | os.PathLike) -> str:
    """``"finished"``, ``"unfinished"`` (a run began writing here), ``"new"``, or ``"foreign"``: run files
    (``config.json``, ``model/``, ...) that no vqflows run wrote."""
    out = Path(out)
    if not (any((out / name).exists() for name in RUN_FILES) or (out / "model").exists()):
        return "new"
    if not _is_run(out):
        return "foreign"
    return "finished" if (out / "metrics.json").exists() else "unfinished"


def refuse_folder(out: Path, state: str, *, overwrite: bool, resume: bool, flags: bool = False) -> str | None:
    """Why a run may not write into ``out``, whose state is ``state`` (:func:`run_state`), given ``overwrite``
    and ``resume``; ``None`` when it may. The message names the way out as the command line spells it
    (``flags=True``: ``--out``, ``--overwrite``, ``--resume``) or as the library does (``out``, ...)."""
    dash, verb = ("--", "add") if flags else ("", "use")
    if state == "foreign":
        held = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                                if p.name in RUN_FILES or p.name == "model"))
        return (f"{dash}out: expected a new folder or a vqflows run folder, got {str(out)!r} holding {held} "
                f"but no {MARKER} (not written by a vqflows run; choose another {'--out' if flags else 'folder'})")
    if state == "finished" and not overwrite:
        return (f"{dash}out: expected a new or unfinished run folder, got the finished run {str(out)!r} "
                f"({verb} {dash}overwrite to replace it{', or choose another --out' if flags else ''})")
    if state == "unfinished" and not (overwrite or resume):
        return (f"{dash}out: expected a new run folder, got the unfinished run {str(out)!r} "
                f"({verb} {dash}resume to continue it or {dash}overwrite to start over)")
    return None


def _is_run(out: Path) -> bool:
    """Whether ``out`` holds a vqflows run: its ``run.json``, or (a run of a version before it) a
    ``config.json`` of run settings only, among them the run's name (dataset, model, seed) and budget."""
    marker = read_json(out / MARKER)
    if isinstance(marker, dict):
        return marker.get("format") == FORMAT
    if (out / MARKER).exists():
        return False
    config = read_json(out / "config.json")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return (isinstance(config, dict) and set(config) <= fields
            and {"dataset", "model", "seed", "epochs", "charts", "lr", "batch_size"} <= set(config))


__all__ = ["CANDIDATES", "FORMAT", "MARKER", "MEMBERSHIPS", "MODELS", "OBJECTIVES", "RUN_FILES", "RunConfig", "SettingError",
           "STACK_PATIENCE", "STACK_REPEATS", "check_repeats", "default_patience", "default_repeats", "refuse_folder", "run_state"]
