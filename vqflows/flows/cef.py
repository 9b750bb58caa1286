r"""Conformal embedding flows: a ``d``-dimensional flow raised into ``R^D`` by a conformal embedding.

Generation is :math:`x = c(g(z))` with :math:`z \sim \mathcal{N}(0, I_d)`, ``g`` a conditional
RealNVP on :math:`\mathbb{R}^d` (inverse ``f``) and ``c`` a conformal embedding
(:mod:`.conformal`) with :math:`J_c^T J_c = \lambda^2 I_d`. The density w.r.t. the
``d``-dimensional volume of the learned manifold :math:`\mathcal{M} = c(\mathbb{R}^d)` is

.. math:: \log p(x) = \log q(f(u)) + \log |\det J_f(u)| - d \log \lambda(u), \qquad u = c^\dagger(x),

since :math:`\sqrt{\det (J_c J_g)^T J_c J_g} = \lambda^d |\det J_g|`. Points off the manifold are
scored at their left-inverse image; training adds the squared distance to that image,
``loss = -α log p(x) + β ||x - c(c†(x))||²``.

References:
    | Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows
    | (Ross & Cresswell, 2021) https://arxiv.org/abs/2106.05275

Letters: N points, D data dimension, d manifold dimension, C context features.
"""

from __future__ import annotations

__all__ = ["CEF", "default_embedding"]

import math
from collections.abc import Sequence

import torch
import zuko
from torch import Tensor
from torch.nn.utils import parametrize

from ..checks import as_points, positive_int
from .base import ChartFlow, StandardNormal
from .conformal import (
    ConditionalRotation,
    ConditionalScaleShift,
    ConditionalSpecialConformal,
    ConformalEmbedding,
    Orthogonal,
    ScaleShift,
    SpecialConformal,
    ZeroPad,
)

#: Default weight of the reconstruction term. The loss is the negative log-likelihood of "density on
#: the manifold plus isotropic Gaussian noise of deviation σ off it" when ``β = 1 / (2 σ²)``; 1000 means
#: σ ≈ 0.022 in the flow's units, about 2 % of a chart's spread once its points are divided by their
#: scale. The term moves only the embedding (the base flow does not enter ``c(c†(x))``), and there it
#: competes with the likelihood, which can gain density by bending the manifold off the data; the
#: residual distance falls as β grows. Small β scores points at projections onto a manifold that misses
#: them, large β trades likelihood for the last digits of distance; 1000 sits between (measured with
#: ``fit_cef_to_caps(beta=B)`` in tests/test_quality.py; the figures are on the documentation's page of
#: measured choices).
BETA = 1000.0


def default_embedding(features: int, manifold_dim: int, context: int = 0) -> ConformalEmbedding:
    r"""Zero padding, then a special conformal map, a rotation and a scale-shift in ``R^D``.

    Composing more Möbius layers adds nothing (they form a group, Ross & Cresswell 2021), and this
    chain reaches every Möbius map of the padded plane: its image is any ``d``-sphere or
    ``d``-plane of ``R^D``. Every layer starts at the identity, so the initial manifold is the plane
    of the first ``d`` coordinates; with ``context > 0`` the special conformal, rotation and
    scale-shift parameters are functions of the context.
    """
    if context:
        tail = [ConditionalSpecialConformal(features, context), ConditionalRotation(features, context),
                ConditionalScaleShift(features, context)]
    else:
        tail = [SpecialConformal(features), Orthogonal(features), ScaleShift(features)]
    return ConformalEmbedding([ZeroPad(manifold_dim, features), *tail])


class CEF(ChartFlow):
    r"""Conformal embedding flow :math:`x = c(g(z; v); v)`, a density on a learned ``d``-manifold in ``R^D``.

    Arguments:
        features: the data dimension ``D``.
        context: the context dimension ``C`` (0 for a plain CEF).
        manifold_dim: the manifold dimension ``d <= D``.
        transforms: the number of RealNVP coupling layers of the base flow.
        hidden_features: the widths of each coupling layer's network.
        alpha: the weight ``α`` of the negative log-likelihood in :meth:`loss`.
        beta: the weight ``β`` of the reconstruction error in :meth:`loss`; see :data:`BETA`.
        embedding: a conformal embedding ``R^d -> R^D`` to use instead of :func:`default_embedding`.

    Example:
        >>> cef = CEF(features=3, context=2, manifold_dim=2)
        >>> x, c = torch.randn(4, 3), torch.randn(4, 2)
        >>> z, ladj = cef(x, c)
        >>> cef.log_prob(x, c).shape, z.shape
        (torch.Size([4]), torch.Size([4, 2]))
    """

    frame = "similarity"

    def __init__(self, features: int = 3, context: int = 0, manifold_dim: int = 2, transforms: int = 5,
                 hidden_features: Sequence[int] = (64, 64), alpha: float = 1.0, beta: float = BETA, *,
                 embedding: ConformalEmbedding | None = None) -> None:
        super().__init__()
        self.features = positive_int(features, name="features")
        self.context = positive_int(context, name="context", minimum=0)
        self.manifold_dim = positive_int(manifold_dim, name="manifold_dim")
        if self.manifold_dim > self.features:
            raise ValueError(f"manifold_dim: expected at most features = {features}, got {manifold_dim}")
        if not (math.isfinite(alpha) and math.isfinite(beta) and alpha >= 0 and beta >= 0):
            raise ValueError(f"alpha, beta: expected finite values >= 0, got {alpha} and {beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        if embedding is None:
            embedding = default_embedding(self.features, self.manifold_dim, self.context)
        elif (embedding.in_features, embedding.out_features) != (self.manifold_dim, self.features) \
                or embedding.context not in (0, self.context):
            raise ValueError(
                f"embedding: expected a map R^{self.manifold_dim} -> R^{self.features} with context 0 or "
                f"{self.context}, got R^{embedding.in_features} -> R^{embedding.out_features} with context {embedding.context}"
            )
        self.embedding = embedding
        self.base = StandardNormal(self.manifold_dim)
        self.flow = zuko.flows.RealNVP(self.manifold_dim, self.context,
                                       transforms=positive_int(transforms, name="transforms"),
                                       hidden_features=tuple(hidden_features))

    # Public entry points validate; everything below them computes.

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log|det J_f(u)| - d log λ(u))`` with ``u = c†(x)``, ``z = f(u)``: ``(N, D), (N, C) -> (N, d), (N,)``."""
        z, ladj, _ = self._terms(*self._check(x, c))
        return z, ladj

    @property
    def penalised(self) -> bool:
        """Whether the penalty can be non-zero (``β > 0`` and ``α > 0``)."""
        return bool(self.alpha and self.beta)

    def forward_and_penalty(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` and the penalty ``(β/α) ||x - c(c†(x))||²`` (0 when ``α = 0``), from one pass."""
        z, ladj, error = self._terms(*self._check(x, c))
        weight = self.beta / self.alpha if self.alpha else 0.0
        return z, ladj, weight * error

    def loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """``-α log p(x|c) + β ||x - c(c†(x))||²``: ``(N, D), (N, C) -> (N,)``."""
        z, ladj, error = self._terms(*self._check(x, c))
        return -self.alpha * (self.base.log_prob(z) + ladj) + self.beta * error

    def reconstruction(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Squared distance ``||x - c(c†(x))||²`` to the left-inverse image, ``(N,)``."""
        x, c = self._check(x, c)
        with parametrize.cached():
            return (x - self.embedding(self._project(x, c), c)).square().sum(-1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generation ``x = c(g(z))`` and ``log|det J_g(z)| + d log λ(g(z))``: ``(N, d), (N, C) -> (N, D), (N,)``."""
        z = as_points(z, self.manifold_dim, name="z", dtype=self._dtype())
        c = self._check_context(c, z.shape[0])
        with parametrize.cached():
            u, ladj = self.flow(c).transform.inv.call_and_ladj(z)
            x, log_lambda = self.embedding.forward_and_log_factor(u, c)
        return x, ladj + self.manifold_dim * log_lambda

    def _project(self, x: Tensor, c: Tensor | None) -> Tensor:
        """``u = c†(x)``, ``(N, D) -> (N, d)``."""
        return self.embedding.inverse(x, c)

    def _terms(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, ladj, ||x - c(c†(x))||²)`` in one pass: ``(N, d), (N,), (N,)``."""
        with parametrize.cached():
            u = self._project(x, c)
            x_hat, log_lambda = self.embedding.forward_and_log_factor(u, c)
            z, ladj = self.flow(c).transform.call_and_ladj(u)
        return z, ladj - self.manifold_dim * log_lambda, (x - x_hat).square().sum(-1)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = as_points(x, self.features, name="x", dtype=self._dtype())
        return x, self._check_context(c, x.shape[0])

    def _check_context(self, c: Tensor | None, rows: int | None) -> Tensor | None:
        if self.context == 0:
            if c is not None:
                raise ValueError(f"c: expected None for an unconditional flow (context = 0), got shape {tuple(c.shape)}")
            return None
        want = f"({rows if rows is not None else 'N'}, {self.context})"
        if c is None:
            raise ValueError(f"c: expected shape {want}, got None")
        c = as_points(c, self.context, name="c", dtype=self._dtype())
        if rows is not None and c.shape[0] != rows:
            raise ValueError(f"c: expected shape {want}, got {tuple(c.shape)}")
        return c
