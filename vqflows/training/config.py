"""Every training setting, declared once: :class:`TrainConfig` and its early-stopping rule.

:func:`vqflows.fit` and :func:`vqflows.train_flow` take a :class:`TrainConfig` and/or keyword overrides
of its fields; the run config, the scikit-learn estimator and the studies build theirs from their own
records with :meth:`TrainConfig.from_record`. This module imports neither torch nor the model, so the
settings can be read and checked before either is loaded.

>>> config = TrainConfig(epochs=20).replace(lr=1e-3)
>>> config.epochs, config.lr, config.early_stopping.patience
(20, 0.001, 10)
>>> TrainConfig().replace(patience=5)
Traceback (most recent call last):
...
ValueError: patience: expected one of the training settings (batch_size, chart_epochs, clip_grad, compile, device, early_stopping, epochs, fit_charts, learn_weights, lr, membership, objective, optimizer, scheduler, seed, threads, top, weight_decay), got an unknown name (use early_stopping=EarlyStopping(patience=...))
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checks import one_of, positive_int
from ..checks import seed as check_seed

#: Training objectives: ``"cells"`` (the paper's eq. 17) or ``"mixture"`` (see :mod:`vqflows.training`).
OBJECTIVES = ("cells", "mixture")
#: How chart weights and frames see the points: each point in its cell, or shared by its nearest charts.
MEMBERSHIPS = ("hard", "soft")
#: The default early-stopping check: the mixture over each validation point's 8 nearest charts, a
#: lower bound of the exact score at 1/4 of its cost with K = 32, chosen by the defaults sweep
#: (``benchmarks/defaults.py``; its measurements are on the training-objective page). With
#: ``top >= K`` the check is exact.
CHECK_TOP = 8

#: The most torch threads accepted per CPU of the machine (:func:`check_threads`): more only
#: oversubscribe, and far more crash torch's thread pool.
THREADS_PER_CPU = 4

#: Names of earlier versions, with what replaces each (named in the error for an unknown setting).
_RENAMED = {"patience": "early_stopping=EarlyStopping(patience=...)",
            "val_points": "early_stopping=EarlyStopping(points=...)",
            "callback": "callbacks=[...]"}


def check_threads(threads: int | None, *, name: str = "threads") -> int | None:
    """Check a torch thread count: ``None`` or 0 (leave torch's setting) up to :data:`THREADS_PER_CPU` × the CPUs here."""
    if threads is None:
        return None
    positive_int(threads, name=name, minimum=0)
    cap = THREADS_PER_CPU * (os.cpu_count() or 1)
    if threads > cap:
        raise ValueError(f"{name}: expected an integer from 0 to {cap} ({THREADS_PER_CPU} per CPU of the "
                         f"{os.cpu_count() or 1} here), got {threads}")
    return int(threads)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation score, and restore the best weights.

    The score is the mixture log-likelihood of a fixed random subset of the validation points, less
    the flow's penalty (the reconstruction term of embedding flows). The mixture, not the cheaper
    per-chart sum, is watched because a chart's cell can catch a few stray points of a distant piece
    of the manifold, whose chart-only scores would swamp the mean.

    Arguments:
        patience: epochs without a better score before training stops.
        points: the size of the validation subset scored each epoch (``None``: every point), so that
            the check's cost stays small beside an epoch.
        top: score each point's ``top`` nearest charts only, a lower bound of the mixture at
            ``top / K`` of its cost (default :data:`CHECK_TOP`); ``None`` runs the exact check.
        initial: also score the model before the first epoch ("epoch 0") and keep it if no epoch
            beats it, so training can only improve the watched score; where the check is not exact (a
            subset of ``points``, or ``top`` below the charts), the kept epoch and epoch 0 are compared
            once more at the end, exactly, on every validation point. :func:`~vqflows.fit` turns it on for
            Gaussian-mixture charts (see :func:`default_early_stopping`): the trained model then never
            ends below the fitted mixture on validation.
    """

    patience: int = 10
    points: int | None = 512
    top: int | None = CHECK_TOP
    initial: bool = False

    def __post_init__(self) -> None:
        positive_int(self.patience, name="patience")
        if self.points is not None:
            positive_int(self.points, name="points")
        if self.top is not None:
            positive_int(self.top, name="top")


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a training: the three stages of :func:`vqflows.fit` and the loop of :func:`vqflows.train_flow`.

    The defaults are those of the command line, chosen on the six 3-D sets (how, with the
    measurements, is on the documentation's results pages): the mixture over each point's 4 nearest
    charts with learned weights, batches of 512 at ``lr=2e-3``, and the top-8 early-stopping check.
    ``objective="cells"`` with ``batch_size=128, lr=1e-3`` is the paper's recipe.

    Arguments:
        epochs: the most flow epochs.
        batch_size: points per optimizer step.
        lr: the learning rate.
        weight_decay: the optimizer's weight decay.
        optimizer: the optimizer, called as ``optimizer(params, lr=lr, weight_decay=weight_decay)``,
            e.g. ``torch.optim.SGD`` (``None``: Adam, fused where the build has it).
        scheduler: a learning-rate scheduler factory ``(optimizer, steps per epoch, epochs) -> scheduler``,
            stepped after every batch (e.g. :func:`vqflows.training.cosine`); ``None``: a constant rate.
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
        early_stopping: the :class:`EarlyStopping` rule (needs validation points), or ``None`` to
            train all ``epochs``.
        chart_epochs: epochs of the chart stage.
        fit_charts: fit the charts (``False`` keeps fitted charts, e.g. to train further).
        membership: ``"hard"`` fits chart weights and frames to each chart's cell (equation 15);
            ``"soft"`` to the responsibility-weighted points of each point's ``top`` nearest charts.
        objective: ``"mixture"`` (the mixture over each point's ``top`` nearest charts) or
            ``"cells"`` (each point in its chart, the paper's eq. 17).
        top: charts per point of the mixture objective and of soft membership.
        learn_weights: learn the chart weights ``p_k`` beside the flow (mixture objective).
        seed: seeds the chart stage, the validation split and subset, and the batches.
        device: where to train (``None``: where the model is); the model stays there.
        threads: torch intra-op threads during the fit (``None`` or 0: torch's setting; the default 1
            suits these small flows, bound by per-operation overhead, and never oversubscribes a busy
            machine; at most :data:`THREADS_PER_CPU` per CPU).
        compile: run the loss through ``torch.compile`` (it pays only on long runs or a warm cache).
    """

    epochs: int = 100
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    optimizer: Callable[..., Any] | None = None
    scheduler: Callable[..., Any] | None = None
    clip_grad: float | None = None
    early_stopping: EarlyStopping | None = field(default_factory=EarlyStopping)
    chart_epochs: int = 30
    fit_charts: bool = True
    membership: str = "hard"
    objective: str = "mixture"
    top: int = 4
    learn_weights: bool = True
    seed: int = 0
    device: Any = None
    threads: int | None = 1
    compile: bool = False

    def __post_init__(self) -> None:
        for name, least in (("epochs", 1), ("batch_size", 1), ("chart_epochs", 0), ("top", 1)):
            positive_int(getattr(self, name), name=name, minimum=least)
        check_seed(self.seed)
        if self.threads is not None:  # the cap per CPU applies where training runs (check_threads)
            positive_int(self.threads, name="threads", minimum=0)
        one_of(self.objective, OBJECTIVES, name="objective")
        one_of(self.membership, MEMBERSHIPS, name="membership")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (wd >= 0 and math.isfinite(wd)):
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {wd!r}")
        if self.clip_grad is not None and not (isinstance(self.clip_grad, (int, float)) and self.clip_grad > 0
                                               and math.isfinite(self.clip_grad)):
            raise ValueError(f"clip_grad: expected a finite number > 0, got {self.clip_grad!r}")
        if self.early_stopping is not None and not isinstance(self.early_stopping, EarlyStopping):
            raise ValueError(f"early_stopping: expected an EarlyStopping or None, got {self.early_stopping!r}")
        for name in ("optimizer", "scheduler"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"{name}: expected a callable or None, got {getattr(self, name)!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` (names of fields); an unknown name raises ``ValueError`` naming the accepted ones."""
        unknown = [k for k in overrides if k not in self.names()]
        if unknown:
            hint = f" (use {_RENAMED[unknown[0]]})" if unknown[0] in _RENAMED else ""
            raise ValueError(f"{unknown[0]}: expected one of the training settings ({', '.join(sorted(self.names()))}), "
                             f"got an unknown name{hint}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """The training settings of a flat record (a run's ``config.json``, an estimator's parameters).

        Keys named like a field are taken, ``patience`` sets the early-stopping patience (``None``: the default), a
        ``top`` of ``None`` is the default (a run's and the estimator's stacked default resolve it from the data), and
        other keys (the model's, the data's) are ignored; ``overrides`` are applied last.
        """
        taken = {k: v for k, v in record.items() if k in cls.names() and not (k == "top" and v is None)}
        if record.get("patience") is not None and "early_stopping" not in taken:
            taken["early_stopping"] = EarlyStopping(patience=record["patience"])
        return cls().replace(**{**taken, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (callables by their qualified name)."""
        out = {}
        for name in self.names():
            value = getattr(self, name)
            if isinstance(value, EarlyStopping):
                value = dataclasses.asdict(value)
            elif callable(value):
                value = getattr(value, "__qualname__", type(value).__qualname__)
            elif value is not None and not isinstance(value, (bool, int, float, str)):
                value = str(value)
            out[name] = value
        return out


def default_early_stopping(model: Any, rule: EarlyStopping | None = EarlyStopping()) -> EarlyStopping | None:  # noqa: B008
    """The rule :func:`~vqflows.fit` applies to ``model``: ``rule`` itself, except that the default rule
    (any patience) counts epoch 0 for Gaussian-mixture charts (a model that starts as the fitted
    mixture): each epoch is checked as the rule checks it (its subset of the validation points, each
    point's nearest charts), and at the end the kept epoch and epoch 0 are scored exactly, over all
    charts on every point, and the better kept, so the trained model is never below the mixture on
    validation (the cheap check chose the same epochs as the exact one: docs/objective.md)."""
    mixture = getattr(getattr(model, "partition", None), "mixture", False)
    if mixture and rule is not None and rule == EarlyStopping(patience=rule.patience):
        return EarlyStopping(rule.patience, rule.points, rule.top, initial=True)
    return rule


def train_config(config: TrainConfig | None = None, overrides: Mapping[str, Any] | None = None, *,
                 val: Any = None) -> TrainConfig:
    """``config`` (default: :class:`TrainConfig`) with keyword ``overrides``, checked; ``val``, the
    argument before ``config``, is refused if it holds the settings."""
    if isinstance(val, TrainConfig):
        raise ValueError("val: expected validation points (M, D), got a TrainConfig (pass it as config=...)")
    if config is None:
        config = TrainConfig()
    elif not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig or None, got {type(config).__name__}")
    return config.replace(**dict(overrides or {}))


__all__ = ["TrainConfig", "EarlyStopping", "train_config", "default_early_stopping", "check_threads", "OBJECTIVES", "MEMBERSHIPS", "CHECK_TOP",
           "THREADS_PER_CPU"]
