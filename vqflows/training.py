"""Training a VQ-Flow in three stages: charts, chart weights (and frames), then the flow.

The flow is trained by Adam on ``-log p(x | k)`` with each point's chart ``k`` (hard boundaries) or a
chart drawn among those containing it, ``k ~ p_k / Σ_{j: x ∈ U_j} p_j`` (equation 17, soft charts).
Early stopping watches the validation objective: the exact mixture log-likelihood of a fixed random subset of the validation
points (``val_points``, so that its cost stays small beside an epoch), less the flow's penalty (the
reconstruction term of embedding flows), and restores the best weights.
The mixture, not the cheaper ``"charts"`` sum, is watched because a chart's cell can catch a few
stray points of a distant piece of the manifold, whose chart-only scores would swamp the mean.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .charts import membership
from .checks import as_points, positive_int
from .model import VQFlow


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class History:
    """What :func:`fit` did. Per-epoch lists share the index ``epoch - 1``."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_log_likelihood: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    chart_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    val_score: list[float] = field(default_factory=list)
    best_val_score: float = -math.inf
    stopped_early: bool = False
    interrupted: bool = False
    chart_seconds: float = 0.0
    flow_seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.epoch)

    @property
    def train_seconds(self) -> float:
        return self.chart_seconds + self.flow_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": self.epochs, "train_seconds": self.train_seconds}


def _draw_charts(member: Tensor, log_w: Tensor, gen: torch.Generator) -> Tensor:
    """One chart per point among its members, with probability ∝ p_k (equation 17)."""
    if bool((member.sum(-1) == 1).all()):
        return member.float().argmax(-1)
    probs = member.double().cpu() * log_w.double().cpu().exp()
    return torch.multinomial(probs, 1, generator=gen).flatten().to(member.device)


def _drop_strays(model: VQFlow, x: Tensor, member: Tensor, trim: float | None) -> Tensor:
    """Leave out of training the (point, chart) pairs lying far outside the chart's frame.

    A chart's cell in code space can catch a few points of a distant piece of the manifold; fitting
    them would stretch that chart's flow. Every point keeps at least its nearest chart, and the
    density is unchanged: at test time all charts are summed.
    """
    if trim is None or model.K == 1:
        return member
    i, k = member.nonzero(as_tuple=True)
    far = model.frames(x[i], k).square().sum(-1) > trim
    kept = member.clone()
    kept[i[far], k[far]] = False
    lost = ~kept.any(-1)
    kept[lost] = member[lost]
    return kept


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(model: VQFlow, train, val=None, *, epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
        weight_decay: float = 0.0, patience: int = 10, chart_epochs: int = 30, seed: int = 0,
        device: str | torch.device = "cpu", progress: bool = False, trim: float | None = 16.0, val_points: int | None = 512,
        callback: Callable[[int, VQFlow, History], None] | None = None) -> History:
    """Fit ``model`` to ``train`` ``(N, D)``; ``val`` ``(M, D)`` drives early stopping.

    Without ``val``, a seeded 10% of ``train`` is held out. Stops after ``patience`` epochs without
    improvement and restores the best weights; on Ctrl-C it also restores them and returns with
    ``history.interrupted = True``. A non-finite loss raises :class:`TrainingError` naming the epoch.
    ``callback(epoch, model, history)`` runs after each epoch (e.g. to score samples over training).
    """
    positive_int(epochs, name="epochs")
    positive_int(batch_size, name="batch_size")
    positive_int(patience, name="patience")
    train = as_points(train, model.features, name="train", min_points=max(model.K, 2))
    if val is None:
        perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
        cut = max(1, train.shape[0] // 10)
        train, val = train[perm[cut:]], train[perm[:cut]]
    else:
        val = as_points(val, model.features, name="val")
    if val_points is not None and val.shape[0] > val_points:
        val = val[torch.randperm(val.shape[0], generator=torch.Generator().manual_seed(seed))[:val_points]]
    dtype = next(model.parameters()).dtype
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {str(device)!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected 'cpu' here (no CUDA device is available), got {str(device)!r}")
    model.to(device)
    train, val = train.to(device, dtype), val.to(device, dtype)
    torch.manual_seed(seed)
    history = History()

    t0 = time.perf_counter()
    bar = _progress(chart_epochs, "charts", progress and model.partition is not None)
    history.chart_loss = model.fit_charts(
        train, seed=seed, epochs=chart_epochs,
        progress=(lambda e, l: (bar.update(1), bar.set_postfix(loss=f"{l:.3f}"))) if bar else None)
    if bar:
        bar.close()
    model.fit_weights(train)
    history.chart_seconds = time.perf_counter() - t0

    with torch.no_grad():
        member = membership(model.chart_distances(train), model.m, model.eps)
        member = _drop_strays(model, train, member, trim)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.flow.parameters() if p.requires_grad]
    try:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    best = copy.deepcopy(model.state_dict())
    since_best = 0
    n = train.shape[0]
    bar = _progress(epochs, "flow", progress)
    t1 = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            te = time.perf_counter()
            model.train()
            charts = _draw_charts(member, model.log_weights, gen)
            perm = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for b, i in enumerate(range(0, n, batch_size)):
                idx = perm[i:i + batch_size]
                loss = model.loss(train[idx], charts[idx]).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite training loss at epoch {epoch}, batch {b + 1}; "
                                        f"try a lower learning rate (lr={lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * idx.shape[0]
            model.eval()
            with torch.no_grad():
                val_ll = float(model.log_prob(val, mode="mixture").mean())
                score = val_ll - float(model.penalty(val).mean())
            history.epoch.append(epoch)
            history.train_loss.append(total / n)
            history.val_log_likelihood.append(val_ll)
            history.epoch_seconds.append(time.perf_counter() - te)
            history.val_score.append(score)
            if score > history.best_val_score:
                history.best_val_score, history.best_epoch = score, epoch
                best = copy.deepcopy(model.state_dict())
                since_best = 0
            else:
                since_best += 1
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.3f}", val=f"{val_ll:.3f}", best=history.best_epoch)
            if callback is not None:
                callback(epoch, model, history)
            if since_best >= patience:
                history.stopped_early = True
                break
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        if bar:
            bar.close()
        history.flow_seconds = time.perf_counter() - t1
        model.load_state_dict(best)
        model.eval()
    return history
