"""Training a VQ-Flow: :func:`fit` = fit the charts → fit weights and frames → :func:`train_flow`.

:func:`train_flow` is the one training loop. It takes an optimizer factory, an optional scheduler
(stepped per batch), gradient clipping, callbacks and an :class:`EarlyStopping` object, and two
objectives:

* ``"cells"`` (paper eq. 17): ``-log p(x | k)`` with each point in its chart ``k`` (hard boundaries),
  or in a chart drawn among those containing it, ``k ~ p_k / Σ_{j: x ∈ U_j} p_j`` (soft charts);
* ``"mixture"``: the mixture likelihood itself over each point's ``top`` nearest charts,
  ``-log Σ_{k ∈ top(x)} p_k p(x | k)``, with the weights ``p_k`` learned beside the flow
  (``learn_weights``) — the model that is trained is the one that is scored. With ``top = K`` it is the
  exact negative log-likelihood; with fewer charts it is an upper bound of it.

:func:`fit` trains on the mixture over each point's 4 nearest charts by default, chosen over hard
cells by a measured sweep (the documentation's page on the training objective);
``objective="cells"`` reproduces the paper's Table 1.

Early stopping watches the mixture log-likelihood of a fixed random subset of the validation points
(``points``, so that its cost stays small beside an epoch), less the flow's penalty (the
reconstruction term of embedding flows), and restores the best weights. The mixture, not the cheaper
``"charts"`` sum, is watched because a chart's cell can catch a few stray points of a distant piece of
the manifold, whose chart-only scores would swamp the mean. By default each epoch scores the mixture
over each point's 8 nearest charts, a lower bound of it at a quarter of the cost at K = 32
(:data:`CHECK_TOP`); :class:`EarlyStopping` also
offers the exact check every epoch, or a bound confirmed by the exact score near the best.

Data-parallel training: when ``torch.distributed`` is initialised (e.g. under ``torchrun``), every
rank runs the chart stage from the same seed and takes rank 0's result, each global batch is split
across ranks the way ``DistributedSampler`` splits a permutation (rank ``r`` takes rows ``r::W``),
the loss module is wrapped in ``DistributedDataParallel``, and early stopping is decided on rank 0 and
broadcast. A run with W ranks and global batch B takes the same steps as one process with batch B.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .charts import membership
from .checks import as_points, one_of, positive_int
from .checks import device as check_device
from .checks import seed as check_seed
from .config import MEMBERSHIPS, OBJECTIVES
from .frames import trim_threshold
from .model import VQFlow

#: The default early-stopping check of :func:`fit`: the mixture over each validation point's 8 nearest
#: charts, a lower bound of the exact score at 1/4 of its cost with K = 32, chosen by the defaults sweep
#: (``benchmarks/defaults.py``; its measurements are on the training-objective page). With ``top >= K``
#: the check is exact.
CHECK_TOP, CHECK_MARGIN = 8, None


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class History:
    """What :func:`fit` did. Per-epoch lists share the index ``epoch - 1``.

    Attributes:
        epoch: the epochs run, from 1.
        train_loss: each epoch's mean training loss.
        val_log_likelihood: each epoch's validation log-likelihood (the exact mixture where
            ``val_exact``, else the early-stopping bound).
        epoch_seconds: each epoch's wall time.
        chart_loss: the chart stage's loss per epoch.
        best_epoch: the epoch whose weights were kept.
        val_score: each epoch's early-stopping score (the log-likelihood less the flow's penalty).
        best_val_score: the best epoch's score.
        val_exact: per epoch, whether the exact check ran.
        best_val_bound: the best epoch's lower bound.
        stopped_early: whether early stopping ended training.
        interrupted: whether Ctrl-C ended training.
        chart_seconds: the chart and weight stages' time.
        flow_seconds: the flow stage's time.
        resumed_at: the epoch a resumed fit went on from (0: not resumed).
        initial_val_score: the untrained flow's score ("epoch 0"), when early stopping counts it
            (``EarlyStopping(initial=True)``; best_epoch 0 means it was kept); else ``None``.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_log_likelihood: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    chart_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    val_score: list[float] = field(default_factory=list)
    best_val_score: float = -math.inf
    #: per epoch: whether the exact check ran (else ``val_log_likelihood`` holds the top-T lower bound)
    val_exact: list[bool] = field(default_factory=list)
    best_val_bound: float = -math.inf
    stopped_early: bool = False
    interrupted: bool = False
    chart_seconds: float = 0.0
    flow_seconds: float = 0.0
    resumed_at: int = 0
    #: the validation score of the untrained flow (epoch 0), when early stopping counts it
    initial_val_score: float | None = None

    @property
    def epochs(self) -> int:
        return len(self.epoch)

    @property
    def train_seconds(self) -> float:
        return self.chart_seconds + self.flow_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": self.epochs, "train_seconds": self.train_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation score, and restore the best weights.

    ``points``: the size of the fixed random validation subset scored each epoch (``None``: all).

    The score is the exact mixture log-likelihood over all K charts. With ``top = T`` it is first
    bounded from below by each point's ``T`` nearest charts, ``log Σ_{k ∈ top-T(x)} p_k p(x | k)``
    (T/K of the exact cost), and the exact check runs only when that bound comes within ``margin``
    nats of the best epoch's bound: the gap between bound and exact score drifts slowly during
    training, so an epoch whose bound is ``margin`` below the best's cannot be a new best.
    ``margin=None`` watches the bound alone; ``top=None`` runs the exact check every epoch.

    ``initial``: also score the model before the first epoch ("epoch 0") and keep it if no epoch beats
    it, so training can only improve the watched score. :func:`fit` turns it on, with the exact check on
    every validation point, for Gaussian-mixture charts: the trained model then never ends below the
    fitted mixture on validation.
    """

    patience: int = 10
    points: int | None = 512
    top: int | None = None
    margin: float | None = None
    initial: bool = False

    def __post_init__(self) -> None:
        positive_int(self.patience, name="patience")
        if self.points is not None:
            positive_int(self.points, name="points")
        if self.top is not None:
            positive_int(self.top, name="top")
        if self.margin is not None and not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin: expected a finite number >= 0 or None, got {self.margin!r}")


#: An optimizer factory: the trainable parameters (or parameter groups) → an optimizer.
OptimizerFactory = Callable[[list], torch.optim.Optimizer]
#: A scheduler factory: (optimizer, steps per epoch, epochs) → a scheduler stepped after every batch.
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], Any]
#: A callback after every epoch, ``callback(epoch, model, history)``; an object may also have
#: ``on_train_begin(model, history)``.
Callback = Callable[[int, VQFlow, History], None]
Data = Tensor | Callable[[int], Tensor]


def adam(lr: float = 1e-3, weight_decay: float = 0.0) -> OptimizerFactory:
    """A factory of Adam with learning rate ``lr`` and ``weight_decay`` (the fused kernel where torch has it)."""
    def make(params: list) -> torch.optim.Optimizer:
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return make


def cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """Cosine annealing of the ``optimizer``'s learning rate to 0 at the last of ``steps_per_epoch * epochs`` steps."""
    total = max(1, steps_per_epoch * epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))


def _draw_charts(member: Tensor, log_w: Tensor, gen: torch.Generator) -> Tensor:
    """One chart per point among its members, with probability ∝ p_k (equation 17)."""
    if bool((member.sum(-1) == 1).all()):
        return member.float().argmax(-1)
    probs = member.double().cpu() * log_w.double().cpu().exp()
    return torch.multinomial(probs, 1, generator=gen).flatten().to(member.device)


def _drop_strays(model: VQFlow, x: Tensor, member: Tensor) -> Tensor:
    """Leave out of training the (point, chart) pairs lying far outside the chart's frame.

    A chart's cell in code space can catch a few points of a distant piece of the manifold; fitting
    them would stretch that chart's flow. Every point keeps at least its nearest chart, and the
    density is unchanged: at test time all charts are summed.
    """
    cutoff = trim_threshold(model.features, model.trim)
    if cutoff is None or model.K == 1:
        return member
    i, k = member.nonzero(as_tuple=True)
    far = model.frames(x[i], k)[0].square().sum(-1) > cutoff
    kept = member.clone()
    kept[i[far], k[far]] = False
    lost = ~kept.any(-1)
    kept[lost] = member[lost]
    return kept


def _check(model: VQFlow, val: Tensor, top: Tensor | None, rule: EarlyStopping,
           best_bound: float) -> tuple[float, float, float, bool]:
    """The early-stopping check: ``(val log-likelihood, score, top-T bound, exact?)`` (see :class:`EarlyStopping`).

    The score is the log-likelihood less the flow's mean penalty on each point's nearest chart.
    """
    if top is None:
        ll = float(model._log_prob(val).mean())
        return ll, ll - float(model.penalty(val).mean()), ll, True
    joint, pen = model.log_joint(val, top)  # top[:, 0] is the nearest chart: its penalty is model.penalty's
    bound, penalty = float(torch.logsumexp(joint, -1).mean()), float(pen[:, 0].mean())
    if rule.margin is None or bound <= best_bound - rule.margin:
        return bound, bound - penalty, bound, False
    ll = float(model._log_prob(val).mean())
    return ll, ll - penalty, bound, True


def interactive() -> bool:
    """Whether a person is likely watching this process: its stderr is a terminal, or it is a Jupyter kernel.

    This decides what ``progress=None`` (the default of :func:`fit` and :func:`train_flow`) does.
    """
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":  # a notebook's kernel
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _world() -> tuple[int, int]:
    """``(rank, world size)`` of an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def _broadcast_state(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers."""
    for t in model.state_dict().values():
        torch.distributed.broadcast(t, src=0)


class _Objective(nn.Module):
    """The per-point training loss as a module (what ``DistributedDataParallel`` wraps)."""

    def __init__(self, model: VQFlow, kind: str, logits: nn.Parameter | None) -> None:
        super().__init__()
        self.model, self.kind, self.logits = model, kind, logits

    def log_weights(self) -> Tensor | None:
        return None if self.logits is None else torch.log_softmax(self.logits, 0)

    def forward(self, x: Tensor, charts: Tensor) -> Tensor:
        if self.kind == "cells":
            return self.model.loss(x, charts)
        return self.model.mixture_loss(x, charts, self.log_weights())


def resolve_device(device) -> torch.device:
    """``device`` as a :class:`torch.device`; ``ValueError`` for a malformed name or a CUDA device that is not there."""
    return check_device(device, name="device")


#: The most torch threads accepted per CPU of the machine (:func:`check_threads`): more only
#: oversubscribe, and far more crash torch's thread pool.
THREADS_PER_CPU = 4


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


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """A context that runs with ``threads`` intra-op threads (``None`` or 0: leave torch's setting), restoring it after."""
    if not check_threads(threads):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fitting_charts(points: int) -> int:
    """A chart count of the usual kind (a power of two) that ``points`` training points can hold."""
    return 1 << (max(points, 1).bit_length() - 1)


def digest(*parts: Any) -> str:
    """SHA-256 (hex) of tensors (dtype, shape and bytes), mappings of them (e.g. a ``state_dict``) and plain values."""
    h = hashlib.sha256()

    def feed(part: Any) -> None:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor {t.dtype} {tuple(part.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(part, Mapping):
            h.update(f"map {len(part)};".encode())
            for k, v in part.items():
                h.update(f"{k!r}:".encode())
                feed(v)
        else:
            h.update(f"{part!r};".encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


#: What a checkpoint holds: tensors and plain data only, so that it loads with ``weights_only=True``.
CHECKPOINT_KEYS = ("epoch", "done", "model", "best", "since_best", "optimizer", "scheduler", "logits", "generator",
                   "torch_rng", "history", "fingerprint")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The training state in the checkpoint ``path`` (on the CPU), read with ``weights_only=True``.

    A file holding anything but tensors and plain data is refused unread (unpickling it could run
    code), as are empty, truncated or foreign files: each with a one-line ``ValueError``.
    """
    path = Path(path)
    again = f"remove {str(path)!r} to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"checkpoint: expected a checkpoint written by training, got an unreadable file "
                             f"{str(path)!r} (UnpicklingError); {again}") from None
        raise ValueError(f"checkpoint: expected tensors and plain data written by training, got {str(path)!r} "
                         f"holding other objects (refused unread: loading it could run code); {again}") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise ValueError(f"checkpoint: expected a checkpoint written by training, got an empty, truncated or "
                         f"unreadable file {str(path)!r} ({type(e).__name__}); {again}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint: expected a checkpoint written by training, got {str(path)!r} without "
                         f"{', '.join(missing)}; {again}")
    return state


def _check_fingerprint(path: Path, saved: Any, now: dict) -> None:
    """Refuse a checkpoint written by a fit with other settings, data or initial model than this one."""
    head = f"checkpoint: expected the checkpoint of this fit, got {str(path)!r}"
    tail = "; remove it to start over"
    if not isinstance(saved, dict):
        raise ValueError(f"{head} without a readable fingerprint{tail}")
    for key in dict.fromkeys([*now, *saved]):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            name = next(k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k))
            raise ValueError(f"{head} written with {name}={a.get(name)!r} where this fit has "
                             f"{name}={b.get(name)!r}{tail}")
        what = {"model": "another initial model", "train": "other training points", "points": "other training points",
                "val": "other validation points"}.get(key, f"another {key}")
        raise ValueError(f"{head} written for {what} (sha256 {str(a)[:12]}..., here {str(b)[:12]}...){tail}")


def _name(f: Any) -> str | None:
    return None if f is None else getattr(f, "__qualname__", type(f).__qualname__)


def default_early_stopping(model: VQFlow, patience: int = 10, points: int | None = 512) -> EarlyStopping:
    """The early stopping of :func:`fit`: the top-8 bound on ``points`` validation points; for Gaussian-mixture
    charts (a model that starts as the fitted mixture) the exact score on every validation point with epoch 0
    counted, so the trained model is never below the mixture on validation."""
    if getattr(model.partition, "mixture", False):
        return EarlyStopping(patience, None, None, None, initial=True)
    return EarlyStopping(patience, points, CHECK_TOP, CHECK_MARGIN)


def fit(model: VQFlow, train, val=None, *, epochs: int = 100, batch_size: int = 512, lr: float = 2e-3,
        weight_decay: float = 0.0, patience: int = 10, chart_epochs: int = 30, seed: int = 0,
        device: str | torch.device | None = None, progress: bool | None = None, val_points: int | None = 512,
        objective: str = "mixture", top: int = 4, learn_weights: bool = True, fit_charts: bool = True,
        optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
        clip_grad: float | None = None, early_stopping: EarlyStopping | None | bool = True,
        callback: Callback | None = None, callbacks: Iterable[Callback] = (),
        checkpoint: str | Path | None = None, threads: int | None = 1, membership: str = "hard",
        compile: bool = False) -> History:
    """Fit ``model`` to ``train`` ``(N, D)``; ``val`` ``(M, D)`` drives early stopping.

    Stages: the charts (skipped with ``fit_charts=False``, e.g. to train further from fitted charts),
    then chart weights and frames, then :func:`train_flow` with the remaining arguments. Stops after
    ``patience`` epochs without improvement and restores the best weights; on Ctrl-C it also restores
    them and returns with ``history.interrupted = True``. A non-finite loss raises
    :class:`TrainingError` naming the epoch. The defaults are those of the command line; how they
    were chosen, with the measurements, is on the documentation's results pages.

    Arguments:
        model: the :class:`~vqflows.VQFlow` to train (its charts, weights, frames and flow).
        train: training points ``(N, D)``: a tensor, a NumPy array or a list; at least one per chart.
        val: validation points ``(M, D)`` for early stopping; ``None`` holds out a seeded 10% of ``train``.
        epochs: the most flow epochs.
        batch_size: points per optimiser step.
        lr: Adam's learning rate (ignored when ``optimizer`` is given).
        weight_decay: Adam's weight decay (ignored when ``optimizer`` is given).
        patience: epochs without a better validation score before stopping.
        chart_epochs: epochs of the chart stage (the VQ autoencoder; k-means ignores it).
        seed: seeds every stage: the held-out split, the charts, the batches and the chart draws.
        device: where to train (default: where the model is); the model stays there.
        progress: progress bars on stderr: ``True``, ``False``, or ``None`` (the default) for bars only
            when a person is watching — stderr is a terminal, or the code runs in a notebook
            (:func:`interactive`).
        val_points: the size of the fixed random validation subset that early stopping scores each
            epoch (``None``: all of ``val``).
        objective: ``"mixture"`` (the mixture over each point's ``top`` nearest charts, the default) or
            ``"cells"`` (the paper's eq. 17, each point in its chart); see the module.
        top: charts per point of the mixture objective.
        learn_weights: learn the chart weights ``p_k`` with the flow (mixture objective).
        fit_charts: run the chart stage; ``False`` keeps the fitted charts.
        optimizer: a factory of the optimizer over the trainable parameters (default :func:`adam`
            with ``lr`` and ``weight_decay``).
        scheduler: a factory of a learning-rate scheduler stepped after every batch (e.g. :func:`cosine`).
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
        early_stopping: ``True`` (the default check, see :data:`CHECK_TOP`), an :class:`EarlyStopping`,
            or ``None``/``False`` to train all ``epochs``.
        callback: called after every epoch as ``callback(epoch, model, history)``.
        callbacks: more such callbacks; an object may also have ``on_train_begin(model, history)``.
        checkpoint: a file written atomically after every epoch (tensors and plain data, read back
            with ``weights_only=True``); if it exists when ``fit`` starts, training resumes from it and
            ends as an uninterrupted run would have. It records a fingerprint of the fit (its settings,
            ``epochs`` included, the training and validation points and the initial model): a
            checkpoint of another fit is refused with a ``ValueError`` naming what differs, as is a
            damaged one or one holding other objects.
        threads: torch intra-op threads during the fit (default 1: these small flows are bound by
            per-operation overhead, and one thread per job never oversubscribes a busy machine;
            ``None`` or 0 keeps torch's setting; at most :data:`THREADS_PER_CPU` per CPU).
        membership: ``"hard"`` fits the chart weights and frames to each chart's cell (equation 15);
            ``"soft"`` to the responsibility-weighted points of each point's ``top`` nearest charts
            (:meth:`VQFlow.responsibilities`), so that neighbouring frames overlap.
        compile: run the loss through ``torch.compile`` (pays on long runs and GPUs).

    Returns:
        The :class:`History` of the fit.

    Raises:
        ValueError: bad input (points of the wrong shape, fewer points than charts, constant data, ...).
        TrainingError: a non-finite training loss.
    """
    one_of(membership, MEMBERSHIPS, name="membership")
    positive_int(epochs, name="epochs")
    positive_int(batch_size, name="batch_size")
    progress = interactive() if progress is None else bool(progress)
    train = as_points(train, model.features, name="train", min_points=2)
    if train.shape[0] < model.K:
        raise ValueError(f"train: expected at least {model.K} points, one per chart (the model has {model.K} charts; "
                         f"build it with fewer, e.g. charts={_fitting_charts(train.shape[0])}), got {train.shape[0]}")
    check_seed(seed)
    check_threads(threads)
    dtype = model.log_weights.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"model: expected a float32 or float64 model to train, got {str(dtype).removeprefix('torch.')} "
                         f"(half precision cannot fit the charts and frames; train with model.float(), then convert)")
    # the points are data, not part of a graph: training must not backpropagate into the caller's tensors
    train = model.check_training_data(train.detach(), name="train")
    if val is None:
        perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
        cut = max(1, train.shape[0] // 10)
        train, val = train[perm[cut:]], train[perm[:cut]]
    else:
        val = model._input(val.detach() if isinstance(val, Tensor) else val, name="val")
    device = resolve_device(device if device is not None else model.log_weights.device)
    model.to(device)
    train, val = train.to(device, dtype), val.to(device, dtype)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resume = checkpoint is not None and checkpoint.exists()
    fingerprint = None
    if checkpoint is not None:  # what a checkpoint must match to be resumed: the settings, data and initial model
        stopping = early_stopping if not isinstance(early_stopping, EarlyStopping) else asdict(early_stopping)
        fingerprint = {
            "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                         "patience": patience, "chart_epochs": chart_epochs, "seed": seed, "val_points": val_points,
                         "objective": objective, "top": top, "learn_weights": learn_weights,
                         "fit_charts": fit_charts, "clip_grad": clip_grad, "early_stopping": stopping,
                         "membership": membership, "dtype": str(dtype), "optimizer": _name(optimizer),
                         "scheduler": _name(scheduler)},
            "train": digest(train), "val": digest(val), "model": digest(model.state_dict())}
    rank, world = _world()
    with torch_threads(threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        history = History()
        if not resume:
            t0 = time.perf_counter()
            if fit_charts:
                bar = _progress(chart_epochs, "charts", progress and model.partition is not None and rank == 0)
                history.chart_loss = model.fit_charts(
                    train, seed=seed, epochs=chart_epochs,
                    progress=(lambda e, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}"))) if bar else None)
                if bar:
                    bar.close()
            model.fit_weights(train, None if membership == "hard" else model.responsibilities(train, top))
            if world > 1:
                _broadcast_state(model)
            history.chart_seconds = time.perf_counter() - t0
        return train_flow(model, train, val, epochs=epochs, batch_size=batch_size,
                          optimizer=optimizer or adam(lr, weight_decay), scheduler=scheduler, clip_grad=clip_grad,
                          early_stopping=default_early_stopping(model, patience, val_points)
                          if early_stopping is True else
                          (early_stopping or None), objective=objective, top=top, learn_weights=learn_weights,
                          callbacks=[*([callback] if callback else []), *callbacks], seed=seed, progress=progress,
                          checkpoint=checkpoint, resume=resume, history=history, compile=compile,
                          fingerprint=fingerprint)


def train_flow(model: VQFlow, train: Data, val: Tensor | None = None, *, epochs: int = 100, batch_size: int = 512,
               optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
               clip_grad: float | None = None, early_stopping: EarlyStopping | None = None,
               objective: str = "mixture", top: int = 4, learn_weights: bool = True,
               callbacks: Iterable[Callback] = (), seed: int = 0, progress: bool | None = None,
               checkpoint: Path | None = None, resume: bool | None = None, history: History | None = None,
               compile: bool = False, fingerprint: Mapping[str, Any] | None = None) -> History:
    """Train the flow of a model whose charts, weights and frames are fitted (stage 3).

    Arguments:
        model: the VQ-Flow; its partition and frames stay fixed.
        train: points ``(N, D)`` on the model's device, or a function ``epoch -> (N, D)`` giving each
            epoch's points (e.g. fresh dequantisation noise); charts are reassigned for each draw.
        val: validation points for ``early_stopping``.
        epochs: the most epochs; ``batch_size``: points per optimiser step.
        optimizer: factory of the optimizer over the trainable parameters (default :func:`adam`).
        scheduler: factory of a learning-rate scheduler stepped after every batch (e.g. :func:`cosine`).
        clip_grad: clip the gradient norm to this value.
        early_stopping: an :class:`EarlyStopping` (needs ``val``), or ``None`` to train all ``epochs``.
        objective: ``"cells"`` or ``"mixture"`` (see the module); ``top``: charts per point of the
            mixture objective; ``learn_weights``: learn ``p_k`` with the mixture objective.
        callbacks: called after every epoch as ``callback(epoch, model, history)``.
        seed: seeds the batches and the chart draws.
        progress: a progress bar: ``True``, ``False``, or ``None`` for one when a person is watching
            (:func:`interactive`).
        checkpoint: a file for the loop's state after every epoch (tensors and plain data, read with
            ``weights_only=True``); ``resume`` (default: whether the file exists) continues from it. A
            checkpoint written with other settings, data or initial model is refused (``ValueError``):
            ``fingerprint`` (default: the model's state when training starts) is what it must match
            beside this loop's own settings and training points.
        history: the :class:`History` to append to (e.g. the one whose chart stage ran before).
        compile: run the loss through ``torch.compile`` (opt-in: it pays only on long runs or a warm cache).
    """
    one_of(objective, OBJECTIVES, name="objective")
    positive_int(top, name="top")
    progress = interactive() if progress is None else bool(progress)
    if clip_grad is not None and not (clip_grad > 0 and math.isfinite(clip_grad)):
        raise ValueError(f"clip_grad: expected a finite number > 0, got {clip_grad!r}")
    if early_stopping is not None and val is None:
        raise ValueError("val: expected validation points for early stopping, got None")
    history = history or History()
    rank, world = _world()
    device = model.log_weights.device
    if val is not None:
        val = as_points(val, model.features, name="val")
    gen = torch.Generator().manual_seed(seed)
    if early_stopping is not None and early_stopping.points is not None and val.shape[0] > early_stopping.points:
        val = val[torch.randperm(val.shape[0], generator=torch.Generator().manual_seed(seed))[:early_stopping.points]]

    def charts_of(x: Tensor) -> Tensor:
        with torch.no_grad():
            if objective == "mixture":
                return model.chart_distances(x).topk(min(top, model.K), dim=-1, largest=False).indices
            return _drop_strays(model, x, membership(model.chart_distances(x), model.m, model.eps))

    dtype = model.log_weights.dtype
    fixed = None if callable(train) else as_points(train, model.features, name="train").to(device, dtype)
    if val is not None:
        val = as_points(val, model.features, name="val").to(device, dtype)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        stopping = None if early_stopping is None else asdict(early_stopping)
        fingerprint = {**(fingerprint if fingerprint is not None else {"model": digest(model.state_dict())}),
                       "settings": {**(fingerprint or {}).get("settings", {}),
                                    "epochs": epochs, "batch_size": batch_size, "objective": objective, "top": top,
                                    "learn_weights": learn_weights, "clip_grad": clip_grad, "seed": seed,
                                    "early_stopping": stopping, "optimizer": _name(optimizer),
                                    "scheduler": _name(scheduler)},
                       "points": digest(fixed) if fixed is not None else _name(train)}

    logits = None
    if objective == "mixture" and learn_weights and model.K > 1:
        logits = nn.Parameter(model.log_weights.detach().clone())
    frozen = [p for p in (model.partition.parameters() if model.partition is not None else []) if p.requires_grad]
    for p in frozen:  # the charts stay fixed while the flow trains
        p.requires_grad_(False)
    loss_module = _Objective(model, objective, logits)
    params = [p for p in model.flow.parameters() if p.requires_grad] + ([logits] if logits is not None else [])
    opt = (optimizer or adam())(params)
    sched, sched_state = None, None
    step_fn: nn.Module = loss_module
    if compile:  # opt-in: 0.6-0.7x epochs once compiled, but tens of seconds to compile cold (docs/results.md)
        step_fn = torch.compile(loss_module)
    if world > 1:
        import inspect

        ddp = nn.parallel.DistributedDataParallel
        # buffers (frames, weights, codes) are equal on every rank after the chart stage: no per-step sync
        quiet = "forward_sync_buffers" in inspect.signature(ddp).parameters
        step_fn = ddp(loss_module, **({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}))

    best = copy.deepcopy(model.state_dict())
    since_best, start = 0, 1
    if checkpoint is not None and (checkpoint.exists() if resume is None else resume):
        state = read_checkpoint(checkpoint)
        _check_fingerprint(checkpoint, state["fingerprint"], fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched_state = state.get("scheduler")
        if logits is not None:
            logits.data.copy_(state["logits"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        best, since_best = state["best"], state["since_best"]
        start = epochs + 1 if state["done"] else state["epoch"] + 1
        history = History.from_dict(state["history"])
        history.resumed_at = state["epoch"]
    # everything derived from the model is computed once its state is final (after a checkpoint is loaded)
    assigned = charts_of(fixed) if fixed is not None else None
    val_top = None  # the validation points' nearest charts, fixed while the flow trains
    if early_stopping is not None and early_stopping.top is not None and early_stopping.top < model.K:
        val_top = model.top_charts(val, early_stopping.top)
    for cb in callbacks:
        begin = getattr(cb, "on_train_begin", None)
        if begin is not None and start == 1:
            begin(model, history)

    if early_stopping is not None and early_stopping.initial and start == 1:  # epoch 0: the untrained flow
        model.eval()
        with torch.no_grad():
            val_ll, score, bound, exact = _check(model, val, val_top, early_stopping, -math.inf) if rank == 0 \
                else (0.0, 0.0, 0.0, True)
        if world > 1:
            t = torch.tensor([score, bound], dtype=torch.float64, device=device)
            torch.distributed.broadcast(t, src=0)
            score, bound = float(t[0]), float(t[1])
        history.initial_val_score = history.best_val_score = score
        history.best_val_bound, history.best_epoch = bound, 0
    bar = _progress(epochs, "flow", progress and rank == 0)
    if bar and start > 1:
        bar.update(start - 1)
    t1 = time.perf_counter() - history.flow_seconds
    try:
        for epoch in range(start, epochs + 1):
            te = time.perf_counter()
            model.train()
            x = fixed if fixed is not None else train(epoch).to(device, model.log_weights.dtype)
            member = assigned if fixed is not None else charts_of(x)
            charts = member if objective == "mixture" else _draw_charts(member, model.log_weights, gen)
            n = x.shape[0]
            if scheduler is not None and sched is None:  # built once the epoch's size is known
                sched = scheduler(opt, math.ceil(n / batch_size), epochs)
                if sched_state is not None:
                    sched.load_state_dict(sched_state)
            perm = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for b, i in enumerate(range(0, n, batch_size)):
                idx = perm[i:i + batch_size]
                if world > 1:
                    rows = idx[rank::world]
                    loss = step_fn(x[rows], charts[rows]).sum() * (world / idx.shape[0])
                else:
                    loss = step_fn(x[idx], charts[idx]).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite training loss at epoch {epoch}, batch {b + 1}; "
                                        f"try a lower learning rate or gradient clipping")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.item() * idx.shape[0] / (world if world > 1 else 1)
            if world > 1:
                t = torch.tensor([total], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                total = float(t)
            if logits is not None:
                with torch.no_grad():
                    model.log_weights.copy_(torch.log_softmax(logits, 0))
            model.eval()
            history.epoch.append(epoch)
            history.train_loss.append(total / n)
            stop = False
            if early_stopping is not None:
                with torch.no_grad():
                    if rank == 0:
                        val_ll, score, bound, exact = _check(model, val, val_top, early_stopping,
                                                             history.best_val_bound)
                    else:
                        val_ll = score = bound = exact = 0.0
                if world > 1:
                    t = torch.tensor([val_ll, score, bound, float(exact)], dtype=torch.float64, device=device)
                    torch.distributed.broadcast(t, src=0)
                    val_ll, score, bound, exact = float(t[0]), float(t[1]), float(t[2]), bool(t[3])
                history.val_log_likelihood.append(val_ll)
                history.val_score.append(score)
                history.val_exact.append(bool(exact))
                if score > history.best_val_score and (exact or early_stopping.margin is None):
                    history.best_val_score, history.best_epoch = score, epoch
                    history.best_val_bound = bound
                    best = copy.deepcopy(model.state_dict())
                    since_best = 0
                else:
                    since_best += 1
                stop = since_best >= early_stopping.patience
            else:
                history.best_epoch = epoch
            history.epoch_seconds.append(time.perf_counter() - te)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.3f}", best=history.best_epoch,
                                **({"val": f"{history.val_log_likelihood[-1]:.3f}"} if early_stopping else {}))
            for cb in callbacks:
                cb(epoch, model, history)
            if stop:
                history.stopped_early = True
            if checkpoint is not None and rank == 0:
                from .io import atomic_torch_save

                history.flow_seconds = time.perf_counter() - t1
                atomic_torch_save({
                    "epoch": epoch, "done": stop or epoch == epochs, "model": model.state_dict(), "best": best, "since_best": since_best,
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                    "logits": logits.detach() if logits is not None else None, "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": history.to_dict(),
                    "fingerprint": fingerprint}, checkpoint)
            if stop:
                break
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        if bar:
            bar.close()
        history.flow_seconds = time.perf_counter() - t1
        for p in frozen:
            p.requires_grad_(True)
        if early_stopping is not None:
            model.load_state_dict(best)
        model.eval()
    return history


__all__ = ["fit", "train_flow", "resolve_device", "History", "EarlyStopping", "TrainingError", "adam", "cosine",
           "torch_threads", "check_threads", "digest", "read_checkpoint", "OBJECTIVES", "MEMBERSHIPS", "CHECK_TOP", "CHECK_MARGIN", "default_early_stopping"]
