"""Fitting a VQ-Flow in three stages: the charts, then chart weights and frames, then the flow."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..charts import chart_weights
from ..checks import as_points
from ..model import VQFlow
from .callbacks import Callback, bar
from .checkpoint import fingerprint
from .config import TrainConfig, check_threads, default_early_stopping, train_config
from .history import History
from .loop import run_loop
from .runtime import Ranks, resolve_device, show_progress, torch_threads


def fit(model: VQFlow, train, val=None, config: TrainConfig | None = None, *, callbacks: Iterable[Callback] = (),
        checkpoint: str | Path | None = None, progress: bool | None = None, **overrides: Any) -> History:
    """Fit ``model`` to ``train`` ``(N, D)``: the charts, then chart weights and frames, then the flow.

    The flow trains in :func:`~vqflows.train_flow` until ``epochs`` or until the early-stopping rule
    stops it, and ends with the best weights; on Ctrl-C it also restores them and returns with
    ``history.interrupted = True``. A non-finite loss raises :class:`~vqflows.training.TrainingError`
    naming the epoch. The caller's random state and torch's thread count are left as they were.

    >>> import vqflows
    >>> splits = vqflows.datasets.load("helix", n=400)
    >>> model = vqflows.build(3, "maf", charts=4, transforms=1, hidden_features=(8,))
    >>> vqflows.fit(model, splits.train, splits.val, epochs=2, chart_epochs=1).epochs
    2

    Arguments:
        model: the VQ-Flow to fit (trained in place, on ``device``).
        train: training points ``(N, D)`` (a tensor or an array).
        val: validation points ``(M, D)`` for early stopping; ``None`` holds out a seeded 10% of ``train``.
        config: the settings (:class:`~vqflows.training.TrainConfig`; default: its defaults).
        callbacks: called after every epoch as ``callback(epoch, model, history)`` (see
            :mod:`vqflows.training.callbacks`).
        checkpoint: a file holding the state after a finished epoch, written atomically after the first
            epoch, then at most every :data:`~vqflows.training.checkpoint.CHECKPOINT_SECONDS` seconds,
            and when training ends (tensors and plain data, read back with ``weights_only=True``); if it
            exists when ``fit`` starts, training resumes from it and ends as an uninterrupted run would
            have. It records a fingerprint of the fit (its settings, ``epochs`` included, the training and
            validation points and the initial model): a checkpoint of another fit is refused with a
            ``ValueError`` naming what differs, as is a damaged one or one holding other objects.
        progress: progress bars on stderr: ``True``, ``False``, or ``None`` (the default) for bars only
            when a person is watching: stderr is a terminal, or the code runs in a notebook
            (:func:`~vqflows.training.interactive`).
        **overrides: fields of :class:`~vqflows.training.TrainConfig` replacing ``config``'s, e.g.
            ``epochs=5, lr=1e-3``; an unknown name raises ``ValueError`` naming the accepted ones.

    Returns:
        The :class:`~vqflows.training.History` of the fit.

    Raises:
        ValueError: bad input (points of the wrong shape, fewer points than charts, constant data, an
            unknown setting, ...).
        TrainingError: a non-finite training loss.
    """
    config = train_config(config, overrides, val=val)
    check_threads(config.threads)
    config = config.replace(early_stopping=default_early_stopping(model, config.early_stopping))
    progress = show_progress(progress)
    train, val = _points(model, train, val, config.seed)
    device = resolve_device(config.device if config.device is not None else model.log_weights.device)
    model.to(device)
    dtype = model.log_weights.dtype
    train, val = train.to(device, dtype), val.to(device, dtype)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resume = checkpoint is not None and checkpoint.exists()
    # what a checkpoint must match to be resumed: the settings, the points and the initial model
    fit_print = fingerprint(config, model, train, val) if checkpoint is not None else None
    with torch_threads(config.threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        history = History()
        if not resume:
            fit_charts_and_frames(model, train, config, history, progress=progress)
        return run_loop(model, train, val, config, callbacks=callbacks, checkpoint=checkpoint, progress=progress,
                        history=history, resume_from=resume, fit_print=fit_print)


def _points(model: VQFlow, train, val, seed: int) -> tuple[Tensor, Tensor]:
    """The checked training and validation points (without ``val``, a seeded 10% of ``train``)."""
    train = as_points(train, model.features, name="train", min_points=2)
    if train.shape[0] < model.K:
        raise ValueError(f"train: expected at least {model.K} points, one per chart (the model has {model.K} charts; "
                         f"build it with fewer, e.g. charts={_fitting_charts(train.shape[0])}), got {train.shape[0]}")
    dtype = model.log_weights.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"model: expected a float32 or float64 model to train, got {str(dtype).removeprefix('torch.')} "
                         f"(half precision cannot fit the charts and frames; train with model.float(), then convert)")
    # the points are data, not part of a graph: training must not backpropagate into the caller's tensors
    train = model.check_training_data(train.detach(), name="train")
    if val is not None:
        return train, model.check_points(val.detach() if isinstance(val, Tensor) else val, name="val")
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = max(1, train.shape[0] // 10)
    return train[perm[cut:]], train[perm[:cut]]


def _fitting_charts(points: int) -> int:
    """A chart count of the usual kind (a power of two) that ``points`` training points can hold."""
    return 1 << (max(points, 1).bit_length() - 1)


def fit_charts_and_frames(model: VQFlow, train: Tensor, config: TrainConfig, history: History, *,
                          progress: bool = False) -> None:
    """The first two stages: the charts (unless ``config.fit_charts`` is false), then the chart weights
    and frames (to the cells, or to responsibilities with ``membership="soft"``); every rank takes rank 0's."""
    t0 = time.perf_counter()
    ranks = Ranks()
    if config.fit_charts:
        shown = bar(config.chart_epochs, "charts") if progress and model.partition is not None and ranks.lead else None

        def show(epoch: int, loss: float) -> None:
            shown.update(1)
            shown.set_postfix(loss=f"{loss:.3f}")

        history.chart_loss = fit_partition(model, train, seed=config.seed, epochs=config.chart_epochs,
                                          progress=show if shown is not None else None)
        if shown is not None:
            shown.close()
    soft = None if config.membership == "hard" else model.responsibilities(train, config.top)
    fit_chart_weights(model, train, soft)
    ranks.share_state(model)
    history.chart_seconds = time.perf_counter() - t0


def fit_partition(model: VQFlow, x, *, seed: int = 0, epochs: int = 30, progress=None) -> list[float]:
    """Stage 1: learn ``model``'s chart centres (VQ-AE, k-means or Gaussian mixture) on ``x`` ``(N, D)``;
    returns the loss per epoch (empty for a one-chart model).

    ``seed`` seeds the stage (the caller's random state is left as it was), ``epochs`` is the VQ
    autoencoder's training length (the other partitions ignore it) and ``progress``, if given, is called
    as ``progress(epoch, loss)`` after every epoch.
    """
    x = model.check_points(x, min_points=max(model.K, 2))
    if model.partition is None:
        return []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.partition.fit(x, seed=seed, epochs=epochs, progress=progress)


@torch.no_grad()
def fit_chart_weights(model: VQFlow, x, responsibilities: Tensor | None = None) -> None:
    """Stage 2: ``model``'s chart weights ``p_k`` (equation 15), chart frames and normalised contexts,
    fitted to ``x`` ``(N, D)`` in place.

    A Gaussian-mixture partition (:class:`~vqflows.charts.GaussianMixtureCharts`) gives them directly:
    its weights and the whitening frames of its components (``x`` is not used).

    ``responsibilities`` ``(N, K)`` (rows summing to 1) replace the hard membership for the weights
    and the frames: ``p_k = mean_i r_ik`` and responsibility-weighted frame moments.
    """
    x = model.check_points(x, min_points=max(model.K, 2))
    if getattr(model.partition, "mixture", False):  # a Gaussian mixture: its weights and whitening frames
        if model.flow.frame != "whitening":
            raise ValueError(f"partition: expected a full-dimensional flow for Gaussian-mixture charts, "
                             f"got one with {model.flow.frame} frames")
        model.log_weights.copy_(model.partition.log_weights.to(model.log_weights))
        model.frames.set_gaussian(model.partition.centres, model.partition.chol)
        _set_contexts(model)
        return
    member = model.membership(x) if responsibilities is None else responsibilities.to(x.device, x.dtype)
    weights = chart_weights(member) if responsibilities is None else member.double().mean(0)
    model.log_weights.copy_(weights.clamp_min(1e-12).log().to(model.log_weights))
    fitted = member if model.local_frames else torch.ones(x.shape[0], model.K, dtype=torch.bool, device=x.device)
    model.frames.fit(x, fitted, kind=model.flow.frame, dim=model.manifold_dim, axis=model.flow.axis, trim=model.trim)
    if model.contexts.shape[1]:
        _set_contexts(model)


def _set_contexts(model: VQFlow) -> None:
    """The flow's chart contexts: the chart centres, centred and scaled by their spread."""
    v = model.partition.centres.detach()
    model.contexts.copy_((v - v.mean(0)) / v.std().clamp_min(1e-8))


__all__ = ["fit", "fit_chart_weights", "fit_charts_and_frames", "fit_partition"]
