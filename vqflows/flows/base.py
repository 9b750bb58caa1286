"""The contract every chart map obeys: a conditional flow with a standard normal base.

A :class:`ChartFlow` is one normalizing flow with its maps in both directions, each returning the
log-absolute-determinant of its Jacobian beside its output (as in nflows and zuko's
``call_and_ladj``):

* ``forward(x, c) -> (z, ladj)``: data to latent, the density direction,
  ``log p(x | c) = log q(z) + ladj``;
* ``inverse(z, c) -> (x, ladj)``: latent to data, generation.

The context ``c`` is the chart's code ``v_k`` (shape ``(N, C)``), or ``None`` for an unconditional
flow (``C = 0``). Full-dimensional flows (RealNVP, MAF, NSF) have ``manifold_dim == features``;
conformal embedding flows have ``manifold_dim = d < D``, their density is w.r.t. the d-volume of
the learned manifold and ``ladj`` is ``½ log det JᵀJ`` of the embedding direction.

What a flow needs from the model around it is part of this interface, not of the model:
:attr:`ChartFlow.frame` says which chart frames may be composed in front of it, and
:meth:`ChartFlow.forward_and_penalty` gives a training penalty beyond ``-log p`` (0 by default).

Letters: N points, D data dimension (``features``), d manifold dimension, C context features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import positive_int

__all__ = ["StandardNormal", "ChartFlow", "FRAME_KINDS"]

#: Chart frame kinds: ``"whitening"`` (any affine map: full flows), ``"similarity"`` (rotation, shift and
#: one scale: densities on a d-volume), ``"rotation"`` (a rotation about the origin: a fixed sphere).
FRAME_KINDS = ("whitening", "similarity", "rotation")


class StandardNormal(nn.Module):
    r"""The base distribution :math:`q = \mathcal{N}(0, I_d)` of every flow, ``(N, d) -> (N,)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z) = -½ (||z||² + d log 2π)``."""
        return -0.5 * (z.square().sum(-1) + self.dim * math.log(2 * math.pi))

    def sample(self, n: int, *, dtype: torch.dtype, device: torch.device | str,
               generator: torch.Generator | None = None) -> Tensor:
        """``(n, d)`` draws; with a (CPU) ``generator`` the draws are made in float64 on the CPU and then
        moved, so that a seed gives the same draws on every device and dtype."""
        if generator is None:
            return torch.randn(n, self.dim, dtype=dtype, device=device)
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float64).to(device, dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ChartFlow(nn.Module):
    """Abstract conditional flow on ``R^D`` (or on a learned ``d``-manifold in ``R^D``).

    Attributes:
        features: the data dimension ``D``.
        context: the context dimension ``C`` (0 when unconditional).
        manifold_dim: ``d``; equal to ``D`` for full-dimensional flows.
        base: the base distribution :class:`StandardNormal` ``(d)``.
        frame: the chart frames that may be composed in front of this flow (:data:`FRAME_KINDS`).
        axis: for ``frame="rotation"``, the direction ``(D,)`` onto which each chart's centre is
            turned (where the flow's latent origin lands); ``None`` otherwise.
        penalised: whether :meth:`forward_and_penalty` can return a non-zero penalty (``False``: it is
            zero everywhere, and the early-stopping check skips the pass that would compute it).
    """

    features: int
    context: int
    manifold_dim: int
    frame: str = "whitening"
    axis: Tensor | None = None
    penalised: bool = False

    @property
    def conformal(self) -> bool:
        """Whether only similarity maps may precede the flow (its density lives on a d-volume)."""
        return self.frame != "whitening"

    def check_support(self, x: Tensor, *, name: str = "x") -> Tensor:
        """Check that the points ``(N, D)`` lie where this flow has a density; return ``x``.

        Every point of ``R^D`` for the flows here; a flow on a fixed set (:class:`~.sphere.SphereCEF`)
        refuses points off it with ``ValueError``.
        """
        return x

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log|det ∂z/∂x|)``: ``(N, D), (N, C) -> (N, d), (N,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det ∂x/∂z|)``: ``(N, d), (N, C) -> (N, D), (N,)``."""
        raise NotImplementedError

    def forward_and_penalty(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, ladj, penalty)``: :meth:`forward` and the per-point training penalty beyond ``-log p``
        (in the units of ``-log p``; zero for full flows) from one pass."""
        z, ladj = self(x, c)
        return z, ladj, torch.zeros_like(ladj)

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact log-density ``log q(f(x)) + log|det J_f(x)|``: ``(N, D), (N, C) -> (N,)``."""
        z, ladj = self(x, c)
        return self.base.log_prob(z) + ladj

    def loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Per-point training loss ``-log p(x|c) + penalty``, ``(N, D), (N, C) -> (N,)``."""
        z, ladj, penalty = self.forward_and_penalty(x, c)
        return penalty - (self.base.log_prob(z) + ladj)

    def sample(self, c: Tensor | None = None, n: int | None = None) -> Tensor:
        """One sample per context row: ``(N, C) -> (N, D)``; with ``c=None`` (``C = 0``), ``n`` samples."""
        if c is None and self.context == 0:
            rows = positive_int(n, name="n")
        else:
            if c is None:
                raise ValueError(f"c: expected shape (N, {self.context}), got None")
            rows = c.shape[0]
            if n is not None and n != rows:
                raise ValueError(f"n: expected None or the number of context rows {rows}, got {n!r}")
        ref = next(self.parameters())
        z = self.base.sample(rows, dtype=ref.dtype, device=ref.device)
        return self.inverse(z, c)[0]

    def reconstruction(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Squared distance ``||x - g(f(x))||²`` to the model's manifold, ``(N,)``.

        Zero for full-dimensional flows, which are bijections of ``R^D``.
        """
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
