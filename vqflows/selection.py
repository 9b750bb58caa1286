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
from pathlib import Path
from typing import Any

import torch

from .baselines import GMM_COMPONENTS, fit_baseline
from .checks import as_points, positive_int
from .config import CANDIDATES
from .model import VQFlow
from .training import History, TrainConfig, fit, resolve_device, torch_threads
from .training.config import train_config
from .training.fitting import fit_charts_and_frames
from .training.objective import nearest_penalty

#: Flows for which ``partition="auto"`` (the run default) chooses on validation between flows trained
#: from the Gaussian mixture whose component count scores best on validation and from a K-component one
#: (their early stopping counts epoch 0, so each ends at or above its mixture on validation); other flows
#: take the VQ-AE (:func:`partition_candidates`, measured in docs/results.md).
AUTO_FLOWS = ("maf",)


@torch.no_grad()
def validation_score(model: VQFlow, val: torch.Tensor) -> float:
    """Mean exact log-likelihood of ``val`` ``(M, D)`` less the flow's mean penalty (0 for full flows)."""
    model.eval()
    ll = float(model.log_prob(val).mean())
    if model.flow.manifold_dim < model.features:
        ll -= float(nearest_penalty(model, model.check_points(val)).mean())
    return ll


def select_charts(make: Callable[..., VQFlow], train, val, *,
                  candidates: Sequence[int | tuple] = CANDIDATES,
                  **fit_options: Any) -> tuple[VQFlow, History, list[dict]]:
    """Fit ``make(K)`` for every ``K`` in ``candidates`` and keep the best on ``val``.

    Arguments:
        make: a factory of an untrained model with ``K`` charts (e.g. ``lambda k: vqflows.build(3, charts=k)``);
            for ``(partition, K)`` candidates it is called as ``make(K, partition)``.
        train, val: points ``(N, D)`` and ``(M, D)``; ``val`` drives both early stopping and the choice.
        candidates: chart counts to try (each ``>= 1``), or ``(partition, K)`` pairs to choose the
            partition too, or ``(partition, K, False)`` for a model whose
            charts are fitted but whose flow is not trained (with ``"gmm"``: the fitted mixture itself);
            counts needing more distinct training points than there are (``manifold_dim + 1`` per chart)
            are skipped.
        fit_options: passed to :func:`vqflows.fit`: ``config``, ``callbacks``, ``progress`` or settings
            of :class:`~vqflows.training.TrainConfig` (``objective``, ``batch_size``, ``seed``, ...).

    Returns:
        ``(model, history, table)``: the chosen fitted model, its history, and one row per candidate
        ``{"charts", "partition", "trained", "val_log_likelihood", "epochs", "seconds"}`` in the order tried
        (``partition`` is ``None`` for plain counts).
    """
    if isinstance(candidates, (str, bytes)) or not len(candidates):
        raise ValueError(f"candidates: expected a non-empty sequence of chart counts, got {candidates!r}")
    specs: list[tuple[str | None, int, bool]] = []
    for c in candidates:
        if isinstance(c, (tuple, list)) and len(c) in (2, 3) and isinstance(c[0], str):
            specs.append((c[0], positive_int(c[1], name="candidates"), bool(c[2]) if len(c) == 3 else True))
        else:
            specs.append((None, positive_int(c, name="candidates"), True))
    ks = [k for _, k, _ in specs]
    checkpoint = fit_options.pop("checkpoint", None)
    several = sum(trained for _, _, trained in specs) > 1
    train = as_points(train, name="train")
    distinct = int(torch.unique(train, dim=0).shape[0])
    best: tuple[float, VQFlow, History] | None = None
    table: list[dict] = []
    for partition, k, trained in specs:
        t0 = time.perf_counter()
        model = make(k) if partition is None else make(k, partition)
        if distinct < (model.manifold_dim + 1) * k:  # what vqflows.checks.training_points asks of the data
            continue
        if trained:
            own = {} if checkpoint is None else {"checkpoint": candidate_checkpoint(checkpoint, partition, k) if several
                                                 else checkpoint}  # a checkpoint belongs to one training
            history = fit(model, train, val, **fit_options, **own)
        else:
            history = _fit_charts_only(model, train, fit_options)
        score = validation_score(model, val)
        table.append({"charts": model.K, "partition": partition, "trained": trained, "val_log_likelihood": score,
                      "epochs": history.epochs, "seconds": time.perf_counter() - t0})
        if best is None or (math.isfinite(score) and score > best[0]):
            best = (score, model, history)
        if history.interrupted:  # Ctrl-C: no further candidates; the caller sees the interruption
            best[2].interrupted = True
            break
    if best is None:
        raise ValueError(f"candidates: expected a chart count with enough distinct training points (manifold "
                         f"dimension + 1 per chart), got {ks} for {distinct} distinct points")
    return best[1], best[2], table


def partition_candidates(flow: str, partition: str, charts: int | str, train, val, *,
                         seed: int = 0) -> list[tuple] | None:
    """The ``(partition, K)`` candidates to choose among on validation, or ``None`` for a single model.

    ``partition="auto"`` with a flow of :data:`AUTO_FLOWS` (MAF): flows trained from the Gaussian mixture
    sized on validation (:func:`vqflows.baselines.fit_baseline` on ``train``/``val``, its count grid
    stopped at the first count that scores worse than the best; 1, 2 or 4 components when the data are
    too few for :data:`~vqflows.baselines.GMM_COMPONENTS`) and from the ``charts``-component
    mixture (every :data:`CANDIDATES` with ``charts="auto"``); each counts epoch 0 in its early stopping,
    so the chosen model is never below the validated mixture on validation. Other flows take the VQ-AE.
    With a fixed partition, ``charts="auto"`` tries :data:`CANDIDATES` and a count gives ``None``.
    """
    ks = CANDIDATES if charts == "auto" else (charts,)
    if partition != "auto" or flow not in AUTO_FLOWS:
        fixed = "vqae" if partition == "auto" else partition
        return [(fixed, k) for k in ks] if charts == "auto" else None
    if train is None or val is None:
        raise ValueError("train, val: expected the data to size the mixture on, got None")
    n = len(as_points(train, name="train"))
    sizes = [k for k in GMM_COMPONENTS if 2 * k <= n] or [k for k in (1, 2, 4) if 2 * k <= n] or [1]
    best = int(fit_baseline("gmm", train, val, seed=seed, candidates=sizes, patience=1).size)
    return [("gmm", k) for k in dict.fromkeys((best, *ks))]


def candidate_checkpoint(checkpoint, partition: str | None, charts: int) -> Path:
    """The checkpoint file of one candidate of a selection that trains several: beside ``checkpoint``, named
    by the candidate (``checkpoint.pt`` -> ``checkpoint-gmm-32.pt``), so that an interrupted selection
    resumes each training where it stopped (a finished candidate's file holds its final state)."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-{partition or 'charts'}-{charts}{path.suffix}")


def _fit_charts_only(model: VQFlow, train, fit_options: dict) -> History:
    """The chart stage of :func:`~vqflows.fit` alone (charts, weights, frames); the flow stays as built."""
    config = train_config(fit_options.get("config"), {k: v for k, v in fit_options.items() if k in TrainConfig.names()})
    device = resolve_device(config.device if config.device is not None else model.log_weights.device)
    model.to(device)
    x = as_points(train, model.features, name="train").to(device, model.log_weights.dtype)
    history = History()
    with torch_threads(config.threads), torch.random.fork_rng():
        torch.manual_seed(config.seed)
        fit_charts_and_frames(model, x, config, history)
    model.eval()
    return history


__all__ = ["AUTO_FLOWS", "CANDIDATES", "partition_candidates", "select_charts", "validation_score"]
