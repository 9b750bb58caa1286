"""What a training did (:class:`History`) and the error that stops one (:class:`TrainingError`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class History:
    """What :func:`vqflows.fit` did. Per-epoch lists share the index ``epoch - 1``.

    Attributes:
        epoch: the epochs run, from 1.
        train_loss: each epoch's mean training loss.
        val_log_likelihood: each epoch's validation log-likelihood (the exact mixture where
            ``val_exact``, else the early-stopping check's top-T lower bound).
        epoch_seconds: each epoch's wall time.
        chart_loss: the chart stage's loss per epoch.
        best_epoch: the epoch whose weights were kept.
        val_score: each epoch's early-stopping score (the log-likelihood less the flow's penalty).
        best_val_score: the best epoch's score.
        val_exact: per epoch, whether the exact check ran.
        stopped_early: whether early stopping ended training.
        interrupted: whether Ctrl-C ended training.
        chart_seconds: the chart and weight stages' time.
        flow_seconds: the flow stage's time.
        resumed_at: the epoch a resumed fit went on from (0: not resumed).
        initial_val_score: the untrained flow's score ("epoch 0"), when early stopping counts it
            (``EarlyStopping(initial=True)``; best_epoch 0 means it was kept); else ``None``.
        val_log_prob: the kept weights' exact log-densities of the validation points ``(M,)``, where the end
            of training scored them (an early-stopping check that counted epoch 0 but was not exact); else
            ``None``. Not saved (:meth:`to_dict`): :func:`~vqflows.selection.select_charts` scores a candidate
            with it instead of a second pass.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_log_likelihood: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    chart_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    val_score: list[float] = field(default_factory=list)
    best_val_score: float = -math.inf
    val_exact: list[bool] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False
    chart_seconds: float = 0.0
    flow_seconds: float = 0.0
    resumed_at: int = 0
    initial_val_score: float | None = None
    val_log_prob: Any = field(default=None, repr=False, compare=False)

    @property
    def epochs(self) -> int:
        return len(self.epoch)

    @property
    def train_seconds(self) -> float:
        return self.chart_seconds + self.flow_seconds

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "val_log_prob"}
        return {**copy.deepcopy(out), "epochs": self.epochs, "train_seconds": self.train_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        """The history in ``d`` (keys it does not know, e.g. of older versions, are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


__all__ = ["History", "TrainingError"]
