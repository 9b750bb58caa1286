r"""A VQ-Flow on the sphere S² that starts as a von Mises–Fisher mixture, one chart per component.

:func:`kernel_vqflow` builds the VQ-Flow equal to a vMF mixture (a kernel density: one chart per kernel,
each an exact vMF chart, :class:`~vqflows.flows.sphere.VMFChartFlow`, with a shared flow started at the
identity); :func:`fit_kernel_flow` starts it at the kernel density chosen on validation
(:func:`vqflows.vmf_kde.fit_vmf_kde`) and trains the shared flow leave-one-out, never ending below that
kernel density on validation.

Letters: N points, K charts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .checks import positive_int
from .flows.sphere import VMFChartFlow
from .geometry import rotation_to
from .model import VQFlow
from .vmf import _as_tensor, _log_prob_matrix, _unit_points
from .vmf_kde import _KDE_ROWS, KDE_FLOORS, KDE_KAPPAS, KernelSelection, _floored, _kernel_log_prob, fit_vmf_kde

__all__ = ["KernelFlowFit", "VMFCharts", "fit_kernel_flow", "kernel_vqflow"]


class VMFCharts(torch.nn.Module):
    """The charts of a vMF mixture, as a VQ-Flow partition: chart ``k`` is component ``k``.

    The "distance" of a point to chart ``k`` is ``-log(π_k vMF(x | μ_k, κ_k))``, so a point's nearest
    charts are its most responsible components. The code of chart ``k`` (the flow's context) is
    ``(log κ_k, μ_k)``. The charts are fixed: :meth:`fit` does nothing.
    """

    def __init__(self, means: Tensor, kappas: Tensor, weights: Tensor) -> None:
        super().__init__()
        self.features, self.codes, self.latent = 3, len(kappas), 4
        self.register_buffer("means", means.double().clone())
        self.register_buffer("kappas", kappas.double().clone())
        self.register_buffer("log_weights", weights.double().clamp_min(1e-300).log())

    @property
    def centres(self) -> Tensor:
        return torch.cat([self.kappas.log()[:, None], self.means], dim=1)

    def distances(self, x: Tensor, *, chunk: int = _KDE_ROWS) -> Tensor:
        xd = x.double()
        xd = xd / xd.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        parts = [-(self.log_weights + _log_prob_matrix(xs, self.means, self.kappas)) for xs in xd.split(chunk)]
        return (torch.cat(parts) if parts else xd.new_zeros(0, self.codes)).to(x.dtype)

    def fit(self, x: Tensor, **unused) -> list[float]:
        return []


def kernel_vqflow(means, kappas, weights=None, *, transforms: int = 2, hidden_features: Sequence[int] = (32,)):
    r"""A :class:`~vqflows.VQFlow` on S² that equals the vMF mixture ``Σ_k π_k vMF(μ_k, κ_k)`` before training.

    One chart per component (:class:`VMFCharts`): a rotation frame turning ``μ_k`` onto ``e_3``, then
    :class:`~vqflows.flows.sphere.VMFChartFlow`, which maps the vMF of concentration ``κ_k`` exactly
    onto ``N(0, I)`` and follows it with a conditional RealNVP whose output layers are zero, the
    identity. The chart weights are ``π_k`` (uniform by default, a kernel density). float64. The flow is
    small (two coupling layers, one hidden layer of 32) because every point is scored under every chart.

    Example:
        >>> from vqflows.vmf import VMFMixture, vmf_sample
        >>> x = vmf_sample(torch.tensor([0.0, 1.0, 0.0]), 40.0, 50, rng=0)
        >>> model = kernel_vqflow(x[:10], torch.full((10,), 40.0))
        >>> mix = VMFMixture(torch.full((10,), 0.1), x[:10], torch.full((10,), 40.0))
        >>> bool(torch.allclose(model.log_prob(x), mix.log_prob(x), atol=1e-9))
        True
    """
    means = _unit_points(means, name="means")
    kappas = _as_tensor(kappas, "kappas")
    if kappas.shape != (len(means),) or not (torch.isfinite(kappas).all() and (kappas > 0).all()):
        raise ValueError(f"kappas: expected ({len(means)},) finite values > 0, got shape {tuple(kappas.shape)}")
    n = len(means)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else _as_tensor(weights, "weights")
    if weights.shape != (n,) or not (weights >= 0).all() or abs(float(weights.sum()) - 1) > 1e-6:
        raise ValueError(f"weights: expected ({n},) non-negative values adding to 1, got shape {tuple(weights.shape)}")
    flow = VMFChartFlow(context=4, transforms=transforms, hidden_features=hidden_features)
    model = VQFlow(flow, VMFCharts(means, kappas, weights)).double()
    log_k = kappas.log()
    with torch.no_grad():
        flow.log_kappa_loc.fill_(float(log_k.mean()))
        flow.log_kappa_scale.fill_(float(log_k.std()) if n > 1 and float(log_k.std()) > 0 else 1.0)
        r = rotation_to(means)  # R_k e_3 = μ_k, so A_k = R_kᵀ turns μ_k onto e_3
        model.frames.shift.zero_()
        model.frames.matrix.copy_(r.transpose(-1, -2))
        model.frames.inverse_matrix.copy_(r)
        model.frames.logdet.zero_()
        model.log_weights.copy_(weights.clamp_min(1e-300).log())
        model.contexts.copy_(torch.cat([log_k[:, None], means], dim=1))
    return model.eval()


class KernelFlowFit(NamedTuple):
    """What :func:`fit_kernel_flow` did.

    Attributes:
        model: the trained VQ-Flow (or the initial one, where training did not beat it on validation).
        selection: the kernel density it started from (:func:`fit_vmf_kde`).
        initial_val_nll, val_nll: exact validation NLL (best floor of ``guard_floors``) at start and at the end.
        epochs, best_epoch: epochs trained; the best one by the validation check (0: the start).
        seconds: wall time of the flow's training.
        val_log_prob: the model's exact log-density at the validation points, ``(M,)`` float64.
    """

    model: torch.nn.Module
    selection: KernelSelection
    initial_val_nll: float
    val_nll: float
    epochs: int
    best_epoch: int
    seconds: float
    val_log_prob: Tensor


def _best_floor_nll(lp: Tensor, floors: Sequence[float]) -> float:
    return min(-float(_floored(lp, w).mean()) for w in floors)


def fit_kernel_flow(train, val, *, kappas: Sequence[float] = KDE_KAPPAS, floors: Sequence[float] = KDE_FLOORS,
                    alphas: Sequence[float] = (0.0, 0.5, 1.0), transforms: int = 2,
                    hidden_features: Sequence[int] = (32,), epochs: int = 30, patience: int = 5,
                    lr: float = 2e-3, batch_size: int = 256, top: int = 8, check_top: int = 32,
                    seed: int = 0, selection: KernelSelection | None = None,
                    guard_floors: Sequence[float] | None = None) -> KernelFlowFit:
    r"""A VQ-Flow started at the kernel density chosen on validation, its flow trained leave-one-out.

    1. :func:`fit_vmf_kde` with ``alphas`` picks the fixed or adaptive kernel density (concentrations
       and floor) on ``val``; :func:`kernel_vqflow` builds the VQ-Flow that equals it, one chart per
       training point.
    2. The shared flow trains on ``-log Σ_{k ∈ top(x_i), k ≠ i} π_k p(x_i | k)`` over each training
       point's ``top`` most responsible charts other than its own (a point's own kernel would
       otherwise pull every chart onto its centre). Adam, early stopping on the validation mixture
       over each point's ``check_top`` most responsible charts, with epoch 0 (the kernel density itself)
       counted, so the best epoch may be the start.
    3. The exact validation NLL (all charts, best floor among ``guard_floors``, default ``floors``) of
       the result is compared with the start's; the start is kept unless training beat it, so the
       model is never below the kernel density on validation (with ``guard_floors ⊇ floors``, also
       not below the kernel density with its own floor).
    """
    train = _unit_points(train, name="train")
    val = _unit_points(val, name="val")
    positive_int(epochs, name="epochs", minimum=0)
    positive_int(patience, name="patience")
    positive_int(top, name="top")
    positive_int(check_top, name="check_top")
    if selection is None:
        selection = fit_vmf_kde(train, val, kappas=kappas, floors=floors, alphas=alphas)
    kde = selection.model
    model = kernel_vqflow(kde.centres, kde.kappas, transforms=transforms, hidden_features=hidden_features)
    guard = sorted({*(floors if guard_floors is None else guard_floors), selection.floor})
    # the model equals the kernel density at the start: its closed form is the exact start
    start_lp = _kernel_log_prob(val, kde.centres, kde.kappas)
    initial = _best_floor_nll(start_lp, guard)
    start = time.perf_counter()
    best_epoch, trained = 0, 0
    if transforms and epochs and len(train) > top + 1:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            best_epoch, trained = _train_kernel_flow(model, train, val, epochs, patience, lr, batch_size, top,
                                                     check_top, seed)
    lp = start_lp
    if best_epoch:
        with torch.no_grad():
            lp = model.log_prob(val).double()
    final = _best_floor_nll(lp, guard)
    if final > initial:  # the check is a bound: keep the start unless the exact score improved
        model = kernel_vqflow(kde.centres, kde.kappas, transforms=transforms, hidden_features=hidden_features)
        final, best_epoch, lp = initial, 0, start_lp
    return KernelFlowFit(model, selection, initial, final, trained, best_epoch, time.perf_counter() - start, lp)


def _train_kernel_flow(model, train: Tensor, val: Tensor, epochs: int, patience: int, lr: float,
                       batch_size: int, top: int, check_top: int, seed: int) -> tuple[int, int]:
    with torch.no_grad():
        near = model.partition.distances(train).topk(min(top + 1, model.K), dim=-1, largest=False).indices
        own = near == torch.arange(len(train))[:, None]
        own[~own.any(-1), -1] = True  # a point whose own chart is not among its nearest drops the last
        charts = near[~own].view(len(train), -1)
        val_top = model.partition.distances(val).topk(min(check_top, model.K), dim=-1, largest=False).indices

    def score() -> float:
        with torch.no_grad():
            return float(torch.logsumexp(model.log_joint(val, val_top)[0], -1).mean())

    params = [p for p in model.flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch, since = score(), copy.deepcopy(model.state_dict()), 0, 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), batch_size):
            idx = perm[i:i + batch_size]
            loss = (-torch.logsumexp(model.log_joint(train[idx], charts[idx])[0], dim=-1)).mean()  # no flow penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        s = score()
        if s > best_score:
            best_score, best_state, best_epoch, since = s, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return best_epoch, epoch
