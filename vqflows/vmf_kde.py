r"""Von Mises–Fisher kernel densities on the sphere S², their concentrations chosen on validation.

A kernel at every training point ``c_i``,

.. math:: p(x) = (1 - w) \frac{1}{N} \sum_{i=1}^{N} C(\kappa_i) e^{\kappa_i c_i^\top x} + \frac{w}{4\pi},

with one concentration for every kernel or one per kernel (Abramson's adaptive rule) and a uniform floor
of weight ``w``; densities are w.r.t. the area measure of the unit sphere, with the normaliser
``C(κ)`` of :mod:`vqflows.vmf`. :func:`fit_vmf_kde` chooses the concentration, the adaptivity and the
floor on validation data; it is a baseline on the Earth datasets and the start of
:func:`vqflows.kernel_flow.fit_kernel_flow`.

Letters: N kernels (training points), M scored points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .geometry import vmf_log_normalizer
from .vmf import VMFMixture, _as_tensor, _unit_points

__all__ = ["KDE_FLOORS", "KDE_KAPPAS", "KDE_KAPPA_MAX", "KernelSelection", "VMFKernelDensity", "adaptive_kappas",
           "fit_vmf_kde", "leave_one_out_log_density"]

#: Concentrations tried by :func:`fit_vmf_kde`: 25 log-spaced values in ``[20, 2·10⁵]``.
KDE_KAPPAS = tuple(float(k) for k in np.logspace(math.log10(20.0), math.log10(2e5), 25))
#: Weights ``w`` of the uniform density tried by :func:`fit_vmf_kde`, ``(1 - w) p + w / 4π``.
KDE_FLOORS = (0.0, 0.01, 0.05, 0.1)
#: Largest per-kernel concentration of an adaptive kernel density.
KDE_KAPPA_MAX = 2e6
_LOG_4PI = math.log(4 * math.pi)
# Rows of x scored against all kernels at once (keeps the (rows, N) float64 block near 40 MB at N = 10⁴).
_KDE_ROWS = 512


def _floored(log_p: Tensor, weight: float) -> Tensor:
    """``log((1 - w) p + w / 4π)``."""
    if weight == 0:
        return log_p
    return torch.logaddexp(log_p + math.log1p(-weight), torch.full_like(log_p, math.log(weight) - _LOG_4PI))


def _kernel_log_prob(x: Tensor, centres: Tensor, kappas: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """``log Σ_i π_i vMF(x | c_i, κ_i)`` (uniform ``π`` by default) in float64, ``(N, 3) -> (N,)``."""
    log_c = vmf_log_normalizer(kappas)
    lw = torch.full_like(kappas, -math.log(len(centres))) if log_weights is None else log_weights
    out = [torch.logsumexp(lw + log_c + kappas * (xs @ centres.T - 1), dim=1) for xs in x.split(_KDE_ROWS)]
    return torch.cat(out) if out else x.new_zeros(0)


class VMFKernelDensity:
    r"""A von Mises–Fisher kernel density on S²: ``p(x) = (1 - w) (1/N) Σ_i C(κ_i) e^{κ_i c_iᵀ x} + w / 4π``.

    One kernel at every centre ``c_i`` (the training points), with one concentration for all or one
    per kernel (an adaptive estimate, :func:`adaptive_kappas`), and a uniform floor of weight ``w``.
    Densities are w.r.t. the area measure of the unit sphere and computed in float64 by log-sum-exp,
    with ``log C(κ) = log κ - log 2π - log(1 - e^{-2κ}) - κ`` kept finite for any κ.

    Arguments:
        centres: ``(N, 3)`` unit vectors.
        kappa: a concentration ``κ >= 0`` for every kernel, or ``(N,)`` of them.
        floor: the uniform weight ``0 <= w < 1``.

    Example:
        >>> from vqflows.vmf import vmf_sample
        >>> x = vmf_sample(torch.tensor([0.0, 0.0, 1.0]), 20.0, 200, rng=0)
        >>> VMFKernelDensity(x, 50.0, floor=0.01).log_prob(x[:3]).shape
        torch.Size([3])
    """

    def __init__(self, centres, kappa, floor: float = 0.0) -> None:
        self.centres = _unit_points(centres, name="centres")
        kappa = _as_tensor(kappa, "kappa")
        if kappa.dim() == 0:
            kappa = kappa.expand(len(self.centres)).clone()
        if kappa.shape != (len(self.centres),):
            raise ValueError(f"kappa: expected a scalar or shape ({len(self.centres)},), got {tuple(kappa.shape)}")
        if not (torch.isfinite(kappa).all() and (kappa >= 0).all()):
            raise ValueError("kappa: expected finite values >= 0")
        if not (isinstance(floor, (int, float)) and 0 <= floor < 1):
            raise ValueError(f"floor: expected a number in [0, 1), got {floor!r}")
        self.kappas, self.floor = kappa, float(floor)

    def log_prob(self, x) -> Tensor:
        """Log-density w.r.t. the area of S², float64: ``(N, 3) -> (N,)``."""
        return _floored(_kernel_log_prob(_unit_points(x, name="x"), self.centres, self.kappas), self.floor)

    def mixture(self) -> VMFMixture:
        """The same density without its floor, as a :class:`VMFMixture` of ``N`` components."""
        n = len(self.centres)
        return VMFMixture(torch.full((n,), 1.0 / n, dtype=torch.float64), self.centres, self.kappas)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernels={len(self.centres)}, floor={self.floor})"


class KernelSelection(NamedTuple):
    """A kernel density chosen on validation data.

    Attributes:
        model: the :class:`VMFKernelDensity` with the best validation log-likelihood.
        kappa: its concentration (``κ₀`` of the adaptive estimate when ``alpha > 0``).
        alpha: its adaptivity exponent (0: one concentration for every kernel).
        floor: its uniform weight.
        val_nll: mean validation NLL (nats) of every ``(alpha, kappa, floor)`` tried.
    """

    model: VMFKernelDensity
    kappa: float
    alpha: float
    floor: float
    val_nll: dict[tuple[float, float, float], float]


def leave_one_out_log_density(x, kappa: float) -> Tensor:
    """``log (1/(N-1)) Σ_{j ≠ i} vMF(x_i | x_j, κ)`` at every point, ``(N, 3) -> (N,)`` float64."""
    x = _unit_points(x, name="x")
    if len(x) < 2:
        raise ValueError(f"x: expected at least 2 points, got {len(x)}")
    kappa_t = torch.tensor(float(kappa), dtype=torch.float64)
    log_c = float(vmf_log_normalizer(kappa_t))
    out = []
    for start in range(0, len(x), _KDE_ROWS):
        block = kappa_t * (x[start:start + _KDE_ROWS] @ x.T - 1)
        rows = torch.arange(len(block))
        block[rows, rows + start] = -math.inf
        out.append(torch.logsumexp(block, dim=1))
    return torch.cat(out) + log_c - math.log(len(x) - 1)


def adaptive_kappas(x, kappa: float, alpha: float, kappa0: float | None = None) -> Tensor:
    r"""Per-kernel concentrations ``κ_i = κ₀ (f̂(x_i) / g)^{2α}`` (Abramson's rule on S²), ``(N,)``.

    ``f̂`` is the leave-one-out kernel density at concentration ``kappa`` (the pilot), ``g`` its
    geometric mean: kernels in dense regions get sharper (a width ``∝ f̂^{-α}``), those in sparse regions
    wider. Clipped to ``[1, KDE_KAPPA_MAX]``. ``kappa0`` defaults to ``kappa``.
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a finite number >= 0, got {alpha!r}")
    pilot = leave_one_out_log_density(x, kappa)
    k0 = float(kappa if kappa0 is None else kappa0)
    return (k0 * torch.exp(2 * alpha * (pilot - pilot.mean()))).clamp(1.0, KDE_KAPPA_MAX)


def fit_vmf_kde(train, val, kappas: Sequence[float] = KDE_KAPPAS, floors: Sequence[float] = KDE_FLOORS,
                alphas: Sequence[float] = (0.0,)) -> KernelSelection:
    """A vMF kernel at every training point; the concentration and the floor chosen on ``val``.

    With ``alphas`` beyond ``(0,)``, adaptive estimates are tried too (:func:`adaptive_kappas`, the pilot
    at the best fixed concentration, ``κ₀`` from ``kappas``); ``0`` is always tried.

    Example:
        >>> from vqflows.vmf import vmf_sample
        >>> x = vmf_sample(torch.tensor([1.0, 0.0, 0.0]), 30.0, 400, rng=0)
        >>> sel = fit_vmf_kde(x[:300], x[300:], kappas=(10.0, 30.0, 100.0), floors=(0.0,))
        >>> sel.kappa in (10.0, 30.0, 100.0), sel.alpha
        (True, 0.0)
    """
    train = _unit_points(train, name="train")
    val = _unit_points(val, name="val")
    grid = [float(k) for k in kappas]
    if not grid or not all(math.isfinite(k) and k > 0 for k in grid):
        raise ValueError(f"kappas: expected one or more finite concentrations > 0, got {tuple(kappas)!r}")
    floors = [float(w) for w in floors]
    if not floors or not all(0 <= w < 1 for w in floors):
        raise ValueError(f"floors: expected one or more weights in [0, 1), got {tuple(floors)!r}")
    alphas = sorted({0.0, *(float(a) for a in alphas)})
    if not all(math.isfinite(a) and a >= 0 for a in alphas):
        raise ValueError(f"alphas: expected finite numbers >= 0, got {tuple(alphas)!r}")
    if len(train) < 2:
        raise ValueError(f"train: expected at least 2 points, got {len(train)}")

    def scan(kernel_kappas: list[Tensor]) -> list[Tensor]:
        # one (rows, N) block of cosines serves every candidate
        logs = [[] for _ in kernel_kappas]
        norms = [vmf_log_normalizer(k) for k in kernel_kappas]
        for vs in val.split(_KDE_ROWS):
            cos1 = vs @ train.T - 1
            for j, k in enumerate(kernel_kappas):
                logs[j].append(torch.logsumexp(norms[j] + k * cos1, dim=1))
        return [torch.cat(v) - math.log(len(train)) for v in logs]

    val_nll: dict[tuple[float, float, float], float] = {}
    best: tuple[float, float, float, float] | None = None
    pilot = None
    for alpha in alphas:
        if alpha == 0:
            kernel_kappas = [torch.full((len(train),), k, dtype=torch.float64) for k in grid]
        else:
            if pilot is None:
                pilot = leave_one_out_log_density(train, best[1])
            scale = torch.exp(2 * alpha * (pilot - pilot.mean()))
            kernel_kappas = [(k * scale).clamp(1.0, KDE_KAPPA_MAX) for k in grid]
        for k, lp in zip(grid, scan(kernel_kappas)):
            for w in floors:
                v = -float(_floored(lp, w).mean())
                val_nll[(alpha, k, w)] = v
                if best is None or v < best[0]:
                    best = (v, k, alpha, w)
    _, k, alpha, w = best
    if alpha == 0:
        model = VMFKernelDensity(train, k, floor=w)
    else:
        scale = torch.exp(2 * alpha * (pilot - pilot.mean()))
        model = VMFKernelDensity(train, (k * scale).clamp(1.0, KDE_KAPPA_MAX), floor=w)
    return KernelSelection(model, k, alpha, w, val_nll)
