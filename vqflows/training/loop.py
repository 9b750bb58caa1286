"""The one training loop, :func:`train_flow`, in its parts: set-up, one epoch, the check, the end.

Each part reads and updates one :class:`LoopState`; what runs after an epoch (the user's callbacks,
the progress bar, the checkpoint) are callbacks (:mod:`.callbacks`), and everything that differs
between one process and several data-parallel ranks is in :class:`~.runtime.Ranks`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import as_points
from ..model import VQFlow
from .callbacks import Callback, ProgressBar
from .checkpoint import Checkpoint, fingerprint, resume
from .config import TrainConfig, train_config
from .history import History, TrainingError
from .objective import Objective, assign_charts, check_score, epoch_charts, exact_check
from .optim import adam
from .runtime import Ranks, show_progress
from .state import LoopState

#: Training points: ``(N, D)``, or a function ``epoch -> (N, D)`` giving each epoch's points.
Data = Tensor | Callable[[int], Tensor]


def train_flow(model: VQFlow, train: Data, val: Tensor | None = None, config: TrainConfig | None = None, *,
               callbacks: Iterable[Callback] = (), checkpoint: str | Path | None = None, progress: bool | None = None,
               **overrides: Any) -> History:
    """Train the flow of a model whose charts, weights and frames are fitted (the last stage of :func:`~vqflows.fit`).

    Arguments:
        model: the VQ-Flow; its partition and frames stay fixed.
        train: points ``(N, D)``, or a function ``epoch -> (N, D)`` giving each epoch's points (e.g.
            fresh dequantisation noise); charts are reassigned for each draw.
        val: validation points ``(M, D)`` for the early-stopping rule (needed unless ``early_stopping=None``).
        config: the settings (:class:`~vqflows.training.TrainConfig`; default: its defaults). The chart
            stage's settings (``chart_epochs``, ``fit_charts``, ``membership``, ``device``, ``threads``)
            are :func:`~vqflows.fit`'s and not used here.
        callbacks: called after every epoch as ``callback(epoch, model, history)`` (see :mod:`.callbacks`).
        checkpoint: a file for the loop's state after a finished epoch (:class:`~.checkpoint.Checkpoint`:
            after the first, then at most every :data:`~.checkpoint.CHECKPOINT_SECONDS` seconds, and at the
            end; tensors and plain data, read with ``weights_only=True``); if it exists, training resumes
            from it. A checkpoint written with other settings, points or starting model is refused
            (``ValueError``).
        progress: a progress bar on stderr: ``True``, ``False``, or ``None`` (the default) for one only
            when a person is watching (:func:`~vqflows.training.interactive`).
        **overrides: fields of :class:`~vqflows.training.TrainConfig` replacing ``config``'s, e.g. ``epochs=5``.

    Returns:
        The :class:`~vqflows.training.History`; with early stopping the model holds the best weights.
    """
    return run_loop(model, train, val, train_config(config, overrides, val=val), callbacks=callbacks,
                    checkpoint=checkpoint, progress=progress)


def run_loop(model: VQFlow, train: Data, val: Tensor | None, config: TrainConfig, *, callbacks: Iterable[Callback] = (),
             checkpoint: str | Path | None = None, progress: bool | None = None, history: History | None = None,
             resume_from: bool | None = None, fit_print: dict[str, Any] | None = None) -> History:
    """:func:`train_flow` with a checked ``config``, the ``history`` so far (of the chart stage),
    ``resume_from`` (default: whether ``checkpoint`` exists) and ``fit_print``, what a checkpoint must
    match (:func:`~.checkpoint.fingerprint`; default: this loop's settings, points and starting model)."""
    if config.early_stopping is not None and val is None:
        raise ValueError("val: expected validation points for early stopping (or early_stopping=None), got None")
    state = set_up(model, train, val, config, history or History())
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        fit_print = fit_print or fingerprint(config, model, train if state.fixed is None else state.fixed,
                                              state.val if state.val_all is None else state.val_all)
        if checkpoint.exists() if resume_from is None else resume_from:
            resume(state, checkpoint, fit_print)
    _derive(state)
    callbacks = list(callbacks)
    if state.start == 1:
        for cb in callbacks:
            begin = getattr(cb, "on_train_begin", None)
            if begin is not None:
                begin(model, state.history)
        if config.early_stopping is not None and config.early_stopping.initial:
            check_initial(state)
    shown = show_progress(progress) and state.ranks.lead
    hooks = [*([ProgressBar(config.epochs, state.start)] if shown else []), *callbacks,
             *([Checkpoint(checkpoint, state, fit_print)] if checkpoint is not None else [])]
    return _epochs(state, hooks)


def set_up(model: VQFlow, train: Data, val: Tensor | None, config: TrainConfig, history: History) -> LoopState:
    """The loop's state before its first epoch: the points on the model's device, the optimizer over
    the flow (and the chart weights' logits), the partition frozen, the loss wrapped for the ranks."""
    device, dtype = model.log_weights.device, model.log_weights.dtype
    rule = config.early_stopping
    val_all = None
    if val is not None:
        val = as_points(val, model.features, name="val").to(device, dtype)
        if rule is not None and rule.points is not None and val.shape[0] > rule.points:
            pick = torch.randperm(val.shape[0], generator=torch.Generator().manual_seed(config.seed))
            val_all, val = (val if rule.initial else None), val[pick[:rule.points].to(device)]
        if rule is not None and rule.initial and rule.top is not None and rule.top < model.K and val_all is None:
            val_all = val  # a bound over the nearest charts: the end compares epoch 0 exactly
    fixed = None if callable(train) else as_points(train, model.features, name="train").to(device, dtype)
    logits = None
    if config.objective == "mixture" and config.learn_weights and model.K > 1:
        logits = nn.Parameter(model.log_weights.detach().clone())
    frozen = [p for p in (model.partition.parameters() if model.partition is not None else []) if p.requires_grad]
    for p in frozen:  # the charts stay fixed while the flow trains
        p.requires_grad_(False)
    objective = Objective(model, config.objective, logits)
    params = [p for p in model.flow.parameters() if p.requires_grad] + ([logits] if logits is not None else [])
    opt = (config.optimizer or adam)(params, lr=config.lr, weight_decay=config.weight_decay)
    ranks = Ranks()
    # opt-in compile: 0.6-0.7x epochs once compiled, but tens of seconds to compile cold (docs/results.md)
    step = ranks.wrap(objective) if ranks.world > 1 else torch.compile(objective) if config.compile else objective
    return LoopState(model=model, config=config, ranks=ranks, history=history, fixed=fixed,
                     draw=train if fixed is None else None, val=val, logits=logits, frozen=frozen, params=params,
                     opt=opt, step=step, gen=torch.Generator().manual_seed(config.seed),
                     best=copy.deepcopy(model.state_dict()), val_all=val_all)


def _derive(state: LoopState) -> None:
    """What the loop derives from the model, once its state is final (after a checkpoint is loaded):
    the fixed points' charts and the validation points' nearest charts."""
    model, config = state.model, state.config
    if state.fixed is not None:
        state.assigned = assign_charts(model, state.fixed, config.objective, config.top)
    rule = config.early_stopping
    if rule is not None and rule.top is not None and rule.top < model.K:
        state.val_top = model.top_charts(state.val, rule.top)


def _epochs(state: LoopState, hooks: list[Callback]) -> History:
    """Run the epochs from ``state.start``; on Ctrl-C stop with ``history.interrupted``."""
    history = state.history
    state.t1 = time.perf_counter() - history.flow_seconds
    try:
        for epoch in range(state.start, state.config.epochs + 1):
            te = time.perf_counter()
            loss = one_epoch(state, epoch)
            history.epoch.append(epoch)
            history.train_loss.append(loss)
            stop = check(state, epoch)
            history.epoch_seconds.append(time.perf_counter() - te)
            if stop:
                history.stopped_early = True
            for cb in hooks:
                cb(epoch, state.model, history)
            if stop:
                break
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        _end(state, hooks)
    return history


def one_epoch(state: LoopState, epoch: int) -> float:
    """One pass over the epoch's points in seeded random batches; returns the mean training loss."""
    model, config, ranks = state.model, state.config, state.ranks
    model.train()
    x = state.fixed if state.fixed is not None else state.draw(epoch).to(state.device, model.log_weights.dtype)
    member = state.assigned if state.fixed is not None else assign_charts(model, x, config.objective, config.top)
    charts = epoch_charts(member, config.objective, model.log_weights, state.gen)
    n = x.shape[0]
    if config.scheduler is not None and state.sched is None:  # built once the epoch's size is known
        state.sched = config.scheduler(state.opt, math.ceil(n / config.batch_size), config.epochs)
        if state.sched_state is not None:
            state.sched.load_state_dict(state.sched_state)
            # building the scheduler set the rate of its first step: give the optimizer the saved one back
            for group, lr in zip(state.opt.param_groups, state.sched.get_last_lr(), strict=True):
                group["lr"] = lr
    perm = torch.randperm(n, generator=state.gen).to(state.device)
    total = 0.0
    for b, i in enumerate(range(0, n, config.batch_size)):
        idx = perm[i:i + config.batch_size]
        loss = ranks.batch_loss(state.step, x, charts, idx)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss at epoch {epoch}, batch {b + 1}; "
                                f"try a lower learning rate or gradient clipping")
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(state.params, config.clip_grad)
        state.opt.step()
        if state.sched is not None:
            state.sched.step()
        total += loss.item() * idx.shape[0] / ranks.world
    total = ranks.total(total, state.device)
    if state.logits is not None:
        with torch.no_grad():
            model.log_weights.copy_(torch.log_softmax(state.logits, 0))
    model.eval()
    return total / n


def check(state: LoopState, epoch: int) -> bool:
    """The early-stopping check after ``epoch`` (decided on rank 0): records the score, keeps the best
    weights, and returns whether to stop."""
    rule, history = state.config.early_stopping, state.history
    if rule is None:
        history.best_epoch = epoch
        return False
    val_ll, score = check_score(state.model, state.val, state.val_top) if state.ranks.lead else (0.0, 0.0)
    val_ll, score = state.ranks.from_lead((val_ll, score), state.device)
    history.val_log_likelihood.append(val_ll)
    history.val_score.append(score)
    history.val_exact.append(state.val_top is None)
    if score > history.best_val_score:
        history.best_val_score, history.best_epoch = score, epoch
        state.best = copy.deepcopy(state.model.state_dict())
        state.since_best = 0
    else:
        state.since_best += 1
    return state.since_best >= rule.patience


def check_initial(state: LoopState) -> None:
    """Epoch 0 of ``EarlyStopping(initial=True)``: the untrained flow's score, kept unless an epoch beats it."""
    state.model.eval()
    score = check_score(state.model, state.val, state.val_top)[1] if state.ranks.lead else 0.0
    (score,) = state.ranks.from_lead((score,), state.device)
    state.history.initial_val_score = state.history.best_val_score = score
    state.history.best_epoch = 0
    if state.val_all is not None:  # the check is not exact: the end compares epoch 0 exactly on every point
        state.initial = copy.deepcopy(state.model.state_dict())


def _end(state: LoopState, hooks: list[Callback]) -> None:
    """However the loop ends: the partition unfrozen, the best weights restored, the callbacks told."""
    history, model = state.history, state.model
    history.flow_seconds = time.perf_counter() - state.t1
    for p in state.frozen:
        p.requires_grad_(True)
    if state.config.early_stopping is not None:
        model.load_state_dict(state.best)
        _keep_initial_if_better(state)
    model.eval()
    for cb in hooks:
        end = getattr(cb, "on_train_end", None)
        if end is not None:
            end(model, history)


def _keep_initial_if_better(state: LoopState) -> None:
    """Where the check was not exact (a subset of the validation points, or their nearest charts) and
    counted epoch 0: the kept epoch and epoch 0 scored exactly on every validation point, and epoch 0
    restored if it scores higher, so that the trained model never ends below its starting model (a
    Gaussian mixture) on validation."""
    history = state.history
    if state.initial is None or state.val_all is None or history.best_epoch == 0:
        return
    model = state.model
    model.eval()
    kept_log_p, kept = exact_check(model, state.val_all) if state.ranks.lead else (None, 0.0)
    model.load_state_dict(state.initial)
    initial_log_p, initial = exact_check(model, state.val_all) if state.ranks.lead else (None, 0.0)
    kept, initial = state.ranks.from_lead((kept, initial), state.device)
    if initial > kept:
        history.best_epoch, history.best_val_score = 0, history.initial_val_score
        history.val_log_prob = initial_log_p
    else:
        model.load_state_dict(state.best)
        history.val_log_prob = kept_log_p


__all__ = ["train_flow", "run_loop", "set_up", "one_epoch", "check", "check_initial", "Data"]
