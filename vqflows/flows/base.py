"""The contract every chart map obeys: a conditional density ``p(x | c)``.

A :class:`ConditionalDensity` is one normalizing flow ``g(z; c)`` with its left inverse
``f(x; c)``; the context ``c`` is the chart's encoded centre ``v_k`` (shape ``(N, C)``), or
``None`` for an unconditional flow (``C = 0``). Full-dimensional flows (RealNVP, MAF, NSF) have
``manifold_dim == features``; conformal embedding flows have ``manifold_dim = d < D`` and their
density is w.r.t. the d-dimensional volume of the learned manifold.

Letters: N points, D data dimension (``features``), d manifold dimension, C context features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConditionalDensity(nn.Module):
    """Abstract conditional density on ``R^D`` (or on a learned ``d``-manifold in ``R^D``).

    Attributes:
        features: the data dimension ``D``.
        context: the context dimension ``C`` (0 when unconditional).
        manifold_dim: ``d``; equal to ``D`` for full-dimensional flows.
        conformal: whether only similarity maps (rotation, shift, one scalar scale) may be
            composed in front of it; ``True`` for embedding flows, whose density is w.r.t. a
            ``d``-volume that a non-isotropic scaling would not preserve.
    """

    features: int
    context: int
    manifold_dim: int
    conformal: bool = False

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact log-density: ``(N, D), (N, C) -> (N,)``."""
        raise NotImplementedError

    def loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Per-point training loss, ``(N, D), (N, C) -> (N,)``; ``-log p(x|c)`` plus any penalty."""
        return -self.log_prob(x, c)

    def sample(self, c: Tensor | None = None, n: int | None = None) -> Tensor:
        """One sample per context row: ``(N, C) -> (N, D)``; with ``c=None``, ``n`` samples."""
        raise NotImplementedError

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Latent code ``z = f(x; c)``: ``(N, D), (N, C) -> (N, d)``."""
        raise NotImplementedError

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Generation ``x = g(z; c)``: ``(N, d), (N, C) -> (N, D)``."""
        raise NotImplementedError

    def reconstruction(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Squared distance ``||x - g(f(x))||^2`` to the model's manifold, ``(N,)``.

        Zero for full-dimensional flows, which are bijections of ``R^D``.
        """
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
