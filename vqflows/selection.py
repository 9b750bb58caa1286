"""Choosing the chart count on validation data (``charts="auto"``).

A surface needs more charts than a curve of the same extent, and a curve with few turns fewer than
one with many; the right ``K`` is not known in advance. :func:`select_charts` fits one model per
candidate ``K`` and keeps the one with the best exact validation log-likelihood (the mixture over
all K charts, less the flow's training penalty for embedding flows), so the choice is made on the
quantity that is reported.

Example:
    >>> import vqflows
    >>> from vqflows.selection import select_charts
    >>> s = vqflows.datasets.load("helix", n=600, seed=0)
    >>> make = lambda k: vqflows.build(3, "maf", charts=k, transforms=1, hidden_features=(8,), vq_hidden=(8,))
    >>> model, history, table = select_charts(make, s.train, s.val, candidates=(2, 4), epochs=2, chart_epochs=1)
    >>> model.K in (2, 4), [row["charts"] for row in table]
    (True, [2, 4])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .checks import as_points, positive_int
from .model import VQFlow
from .training import History, fit

#: Chart counts tried by ``charts="auto"``: from a few charts per curve to enough for a surface.
CANDIDATES = (8, 16, 32, 64)


@torch.no_grad()
def validation_score(model: VQFlow, val: torch.Tensor) -> float:
    """Mean exact log-likelihood of ``val`` ``(M, D)`` less the flow's mean penalty (0 for full flows)."""
    model.eval()
    ll = float(model.log_prob(val).mean())
    if model.flow.manifold_dim < model.features:
        ll -= float(model.penalty(model._input(val)).mean())
    return ll


def select_charts(make: Callable[[int], VQFlow], train, val, *, candidates: Sequence[int] = CANDIDATES,
                  **fit_options: Any) -> tuple[VQFlow, History, list[dict]]:
    """Fit ``make(K)`` for every ``K`` in ``candidates`` and keep the best on ``val``.

    Arguments:
        make: a factory of an untrained model with ``K`` charts (e.g. ``lambda k: vqflows.build(3, charts=k)``).
        train, val: points ``(N, D)`` and ``(M, D)``; ``val`` drives both early stopping and the choice.
        candidates: chart counts to try (each ``>= 1``); counts needing more distinct training points than there are (``manifold_dim + 1`` per chart) are skipped.
        fit_options: passed to :func:`vqflows.fit` (``objective``, ``batch_size``, ``seed``, ...).

    Returns:
        ``(model, history, table)``: the chosen fitted model, its history, and one row per candidate
        ``{"charts", "val_log_likelihood", "epochs", "seconds"}`` in the order tried.
    """
    if isinstance(candidates, (str, bytes)) or not len(candidates):
        raise ValueError(f"candidates: expected a non-empty sequence of chart counts, got {candidates!r}")
    ks = [positive_int(k, name="candidates") for k in candidates]
    train = as_points(train, name="train")
    distinct = int(torch.unique(train, dim=0).shape[0])
    best: tuple[float, VQFlow, History] | None = None
    table: list[dict] = []
    need = {}
    for k in ks:
        t0 = time.perf_counter()
        model = make(k)
        need[k] = (model.manifold_dim + 1) * k  # what vqflows.checks.training_points asks of the data
        if distinct < need[k]:
            continue
        history = fit(model, train, val, **fit_options)
        score = validation_score(model, val)
        table.append({"charts": model.K, "val_log_likelihood": score, "epochs": history.epochs,
                      "seconds": time.perf_counter() - t0})
        if best is None or (math.isfinite(score) and score > best[0]):
            best = (score, model, history)
    if best is None:
        raise ValueError(f"candidates: expected a chart count with enough distinct training points (manifold "
                         f"dimension + 1 per chart), got {ks} for {distinct} distinct points")
    return best[1], best[2], table


__all__ = ["CANDIDATES", "select_charts", "validation_score"]
