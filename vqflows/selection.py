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

from .charts import local_dimension
from .checks import as_points, positive_int
from .config import AUTO_FLOWS, CANDIDATES, CURVE_DIMENSION, CURVE_TOP, default_top, stacks
from .ensemble import VQFlowEnsemble, stacking_weights
from .model import VQFlow
from .training import History, TrainConfig, fit, resolve_device, torch_threads
from .training.config import train_config
from .training.fitting import fit_charts_and_frames
from .training.objective import nearest_penalty

#: The members' chart counts of ``partition="auto"``, as multiples of ``charts`` (32: 8, 16, 32 and 64).
ATLAS_SCALES = (0.25, 0.5, 1, 2)
#: A repeated candidate ``r`` trains with seed ``seed + REPEAT_SEED * r`` (its chart fit, initial weights, batches).
REPEAT_SEED = 1000


def validation_score(model: VQFlow | VQFlowEnsemble, val: torch.Tensor) -> float:
    """Mean exact log-likelihood of ``val`` ``(M, D)`` less the flow's mean penalty (0 for full flows)."""
    return _validation(model, val)[1]


@torch.no_grad()
def _validation(model: VQFlow | VQFlowEnsemble, val: torch.Tensor, known: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, float]:
    """:func:`validation_score` and the log-densities ``(M,)`` it averages (kept for stacking); ``known``: those
    log-densities, when the end of the model's training computed them (``History.val_log_prob``)."""
    model.eval()
    usable = known is not None and known.shape == (len(val),) and bool(torch.isfinite(known).all())
    log_p = known if usable else model.log_prob(val)  # log_prob names the rows of a non-finite density
    ll = float(log_p.mean())
    if isinstance(model, VQFlow) and model.flow.penalised:  # zero otherwise: no pass to compute it
        ll -= float(nearest_penalty(model, model.check_points(val)).mean())
    return log_p, ll


def select_charts(make: Callable[..., VQFlow], train, val, *,
                  candidates: Sequence[int | tuple] = CANDIDATES, stack: bool = False,
                  **fit_options: Any) -> tuple[VQFlow | VQFlowEnsemble, History, list[dict]]:
    """Fit ``make(K)`` for every ``K`` in ``candidates`` and keep the best on ``val`` (or, with ``stack``, all of them).

    Arguments:
        make: a factory of an untrained model with ``K`` charts (e.g. ``lambda k: vqflows.build(3, charts=k)``);
            for ``(partition, K)`` candidates it is called as ``make(K, partition)``.
        train, val: points ``(N, D)`` and ``(M, D)``; ``val`` drives both early stopping and the choice.
        candidates: chart counts to try (each ``>= 1``), or ``(partition, K)`` pairs to choose the
            partition too, ``(partition, K, True, r)`` for the ``r``-th further draw of a candidate (``make`` is
            called as ``make(K, partition, r)`` and the fit's seed is offset by :data:`REPEAT_SEED` × ``r``),
            or ``(partition, K, False)`` for a model whose
            charts are fitted but whose flow is not trained (with ``"gmm"``: the fitted mixture itself);
            counts needing more distinct training points than there are (``manifold_dim + 1`` per chart)
            are skipped.
        stack: return the trained candidates as one :class:`~vqflows.ensemble.VQFlowEnsemble` whose weights
            maximise the validation log-likelihood (:func:`~vqflows.ensemble.stacking_weights`), which is then
            at least the best candidate's; its table row has ``partition="ensemble"`` (with one trained
            candidate, that candidate is returned; data too few for every candidate get the best of 4, 2 or 1
            charts).
        fit_options: passed to :func:`vqflows.fit`: ``config``, ``callbacks``, ``progress`` or settings
            of :class:`~vqflows.training.TrainConfig` (``objective``, ``batch_size``, ``seed``, ...).

    Returns:
        ``(model, history, table)``: the chosen fitted model, its history (an ensemble's: its members'
        one after another, :func:`joined_history`), and one row per candidate
        ``{"charts", "partition", "trained", "val_log_likelihood", "epochs", "seconds"}`` in the order tried
        (``partition`` is ``None`` for plain counts; with ``stack`` each row has its ``weight``).
    """
    if isinstance(candidates, (str, bytes)) or not len(candidates):
        raise ValueError(f"candidates: expected a non-empty sequence of chart counts, got {candidates!r}")
    specs: list[tuple[str | None, int, bool, int]] = []
    for c in candidates:
        if isinstance(c, (tuple, list)) and len(c) in (2, 3, 4) and isinstance(c[0], str):
            repeat = positive_int(c[3], name="candidates", minimum=0) if len(c) == 4 else 0
            specs.append((c[0], positive_int(c[1], name="candidates"), bool(c[2]) if len(c) >= 3 else True, repeat))
        else:
            specs.append((None, positive_int(c, name="candidates"), True, 0))
    ks = [k for _, k, _, _ in specs]
    checkpoint = fit_options.pop("checkpoint", None)
    several = sum(trained for _, _, trained, _ in specs) > 1
    seed = train_config(fit_options.get("config"), {k: v for k, v in fit_options.items() if k in TrainConfig.names()}).seed
    train = as_points(train, name="train")
    distinct = int(torch.unique(train, dim=0).shape[0])
    best: tuple[float, VQFlow, History] | None = None
    table: list[dict] = []
    trained_models: list[tuple[VQFlow, History]] = []
    for partition, k, trained, repeat in specs:
        t0 = time.perf_counter()
        model = make(k) if partition is None else make(k, partition) if not repeat else make(k, partition, repeat)
        if distinct < (model.manifold_dim + 1) * k:  # what vqflows.checks.training_points asks of the data
            continue
        if trained:
            own = {} if checkpoint is None else {"checkpoint": candidate_checkpoint(checkpoint, partition, k, repeat)
                                                 if several else checkpoint}  # a checkpoint belongs to one training
            if repeat:  # another draw of the same candidate: its own chart fit, initial weights and batches
                own["seed"] = seed + REPEAT_SEED * repeat
            history = fit(model, train, val, **{**fit_options, **own})
        else:
            history = _fit_charts_only(model, train, fit_options)
        log_p, score = _validation(model, val, history.val_log_prob)
        table.append({"charts": model.K, "partition": partition, "trained": trained, "val_log_likelihood": score,
                      "epochs": history.epochs, "seconds": time.perf_counter() - t0, **({"repeat": repeat} if repeat else {})})
        if trained and math.isfinite(score):
            trained_models.append((model, history, log_p))
        if best is None or (math.isfinite(score) and score > best[0]):
            best = (score, model, history)
        if history.interrupted:  # Ctrl-C: no further candidates; the caller sees the interruption
            best[2].interrupted = True
            return best[1], best[2], table
    if best is None and stack and min(ks) > 1:  # too few points for every member: the fewest charts that fit
        smaller = [(specs[0][0], k) if specs[0][0] else k for k in (4, 2, 1) if k < min(ks)]
        return select_charts(make, train, val, candidates=smaller, checkpoint=checkpoint, **fit_options)
    if best is None:
        raise ValueError(f"candidates: expected a chart count with enough distinct training points (manifold "
                         f"dimension + 1 per chart), got {ks} for {distinct} distinct points")
    if stack and len(trained_models) > 1:
        return _stacked(trained_models, val, table)
    return best[1], best[2], table


@torch.no_grad()
def _stacked(trained: list[tuple[VQFlow, History, torch.Tensor]], val, table: list[dict]) -> tuple[VQFlowEnsemble, History, list[dict]]:
    """The trained candidates as one ensemble, weighted to maximise the validation log-likelihood (each
    candidate's validation log-densities, ``(M,)``, come with it: the pass that scored it)."""
    t0 = time.perf_counter()
    models = [m for m, _, _ in trained]
    log_probs = torch.stack([lp for _, _, lp in trained], dim=-1)
    weights = stacking_weights(log_probs)
    ensemble = VQFlowEnsemble(models, weights).eval()
    rows = [row for row in table if row["trained"] and math.isfinite(row["val_log_likelihood"])]
    for row, w in zip(rows, weights.tolist()):
        row["weight"] = w
    table.append({"charts": ensemble.K, "partition": "ensemble", "trained": False,
                  "val_log_likelihood": float(torch.logsumexp(log_probs + ensemble.log_mix, dim=-1).mean()),
                  "epochs": 0, "seconds": time.perf_counter() - t0})
    return ensemble, joined_history([h for _, h, _ in trained]), table


def joined_history(histories: Sequence[History]) -> History:
    """One :class:`History` of several trainings run one after another (an ensemble's members): their epochs
    numbered on from each other, their times summed; ``best_epoch`` is the last member's kept epoch and
    ``resumed_at`` the epoch a resumed selection went on from, in that numbering (each member's own best
    epoch is in the selection table)."""
    out = History()
    for h in histories:
        offset = out.epochs
        out.epoch += [offset + e for e in h.epoch]
        for name in ("train_loss", "val_log_likelihood", "epoch_seconds", "chart_loss", "val_score", "val_exact"):
            getattr(out, name).extend(getattr(h, name))
        out.best_epoch = offset + h.best_epoch
        if h.resumed_at:  # the last member a resumed selection went on in
            out.resumed_at = offset + h.resumed_at
        out.chart_seconds += h.chart_seconds
        out.flow_seconds += h.flow_seconds
        out.interrupted = out.interrupted or h.interrupted
    out.stopped_early = all(h.stopped_early for h in histories)
    out.best_val_score = max((h.best_val_score for h in histories), default=-math.inf)
    return out


def partition_candidates(flow: str, partition: str, charts: int | str, repeats: int = 1) -> list[tuple] | None:
    """The ``(partition, K)`` candidates to train, or ``None`` for a single model.

    ``partition="auto"`` with a flow of :data:`AUTO_FLOWS` (MAF): flows trained from Gaussian mixtures of
    ``charts`` times :data:`ATLAS_SCALES` components (8, 16, 32 and 64 for ``charts=32``; :data:`CANDIDATES`
    with ``charts="auto"``), which :func:`stacks` says to combine into one ensemble. Other flows take the
    VQ-AE. With a fixed partition, ``charts="auto"`` tries :data:`CANDIDATES` (the best on validation is kept)
    and a count gives ``None``. ``repeats``: members per mixture size, each drawn from its own seed
    (``(partition, K, True, r)`` candidates; runs and the estimator take :data:`vqflows.config.STACK_REPEATS`,
    2, which lowered the knot's gap below 0.05, docs/results.md).
    """
    ks = CANDIDATES if charts == "auto" else (charts,)
    if not stacks(flow, partition):
        fixed = "vqae" if partition == "auto" else partition
        return [(fixed, k) for k in ks] if charts == "auto" else None
    if charts != "auto":
        ks = tuple(dict.fromkeys(max(1, round(charts * scale)) for scale in ATLAS_SCALES))
    return [("gmm", k) for k in ks] + [("gmm", k, True, r) for r in range(1, positive_int(repeats, name="repeats"))
                                       for k in ks]


def stack_top(train, charts: int | str = 32, seed: int = 0) -> int:
    """The charts per point of the stacked default's training objective on ``train`` ``(N, D)``: :data:`CURVE_TOP`
    (2) where the data are a curve at the scale of ``charts`` cells (``"auto"``: 32), else the training default."""
    cells = charts if isinstance(charts, int) else 32
    dimension = local_dimension(as_points(train, name="train"), cells, seed)
    return CURVE_TOP if dimension < CURVE_DIMENSION else default_top(None)


def candidate_checkpoint(checkpoint, partition: str | None, charts: int, repeat: int = 0) -> Path:
    """The checkpoint file of one candidate of a selection that trains several: beside ``checkpoint``, named
    by the candidate (``checkpoint.pt`` -> ``checkpoint-gmm-32.pt``, its second draw ``checkpoint-gmm-32-r1.pt``),
    so that an interrupted selection resumes each training where it stopped (a finished candidate's file
    holds its final state)."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-{partition or 'charts'}-{charts}{f'-r{repeat}' if repeat else ''}{path.suffix}")


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


__all__ = ["ATLAS_SCALES", "AUTO_FLOWS", "CANDIDATES", "joined_history", "partition_candidates", "select_charts", "stack_top",
           "stacks", "validation_score"]
