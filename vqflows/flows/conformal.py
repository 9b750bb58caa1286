r"""Conformal layers and their compositions, the dimension-raising part of a conformal embedding flow.

Every layer obeys one contract, written in the generation direction ``u -> x``:

* ``forward(u, c) -> x``: ``(N, d_in), (N, C) -> (N, d_out)``, with ``d_out >= d_in``;
* ``inverse(x, c) -> u``: a left inverse, ``inverse(forward(u)) == u``;
* ``log_factor(u, c) -> (N,)``: the log conformal factor :math:`\log \lambda(u)`, where the Jacobian
  of ``forward`` satisfies :math:`J(u)^T J(u) = \lambda(u)^2 I_{d_{in}}`.

For a chain :math:`c = c_J \circ \dots \circ c_1` the factors multiply,
:math:`\log \lambda(u) = \sum_j \log \lambda_j(u_{j-1})` with :math:`u_0 = u`,
:math:`u_j = c_j(u_{j-1})`, so that the volume change of a ``d``-dimensional patch is
:math:`\sqrt{\det J^T J} = \lambda(u)^d`.

Unconditional layers ignore the context ``c``; conditional layers compute their parameters from
``c`` (shape ``(N, C)``, one row per point) with a small hypernetwork whose last layer starts at
zero, so that every conditional layer starts as the identity.

References:
    | Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows
    | (Ross & Cresswell, 2021) https://arxiv.org/abs/2106.05275

Letters: N points, D data dimension, d manifold dimension, C context features.
"""

from __future__ import annotations

__all__ = [
    "ConformalLayer",
    "ZeroPad",
    "ScaleShift",
    "Orthogonal",
    "SpecialConformal",
    "ConditionalScaleShift",
    "ConditionalRotation",
    "ConditionalSpecialConformal",
    "ConformalEmbedding",
]

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal
from zuko.nn import MLP


class ConformalLayer(nn.Module):
    r"""Abstract conformal map :math:`\mathbb{R}^{d_{in}} \to \mathbb{R}^{d_{out}}`.

    Attributes:
        in_features: the input dimension ``d_in``.
        out_features: the output dimension ``d_out``.
        context: the context dimension ``C`` (0 for unconditional layers).
    """

    in_features: int
    out_features: int
    context: int = 0

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        """Generation ``x = c(u)``: ``(N, d_in), (N, C) -> (N, d_out)``."""
        raise NotImplementedError

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Left inverse ``u = c†(x)``: ``(N, d_out), (N, C) -> (N, d_in)``."""
        raise NotImplementedError

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Log conformal factor :math:`\log \lambda(u)`: ``(N, d_in), (N, C) -> (N,)``."""
        raise NotImplementedError

    def forward_and_log_factor(self, u: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(forward(u, c), log_factor(u, c))``, sharing work where a layer can."""
        return self.forward(u, c), self.log_factor(u, c)


def _zeros(u: Tensor) -> Tensor:
    return u.new_zeros(u.shape[:-1])


class ZeroPad(ConformalLayer):
    r"""Zero padding :math:`\mathbb{R}^d \to \mathbb{R}^D`, :math:`u \mapsto (u, 0)`, with :math:`\lambda = 1`.

    Its left inverse keeps the first ``d`` coordinates (the orthogonal projection onto the padded plane).

    Example:
        >>> pad = ZeroPad(2, 3)
        >>> pad(torch.tensor([[1.0, 2.0]]))
        tensor([[1., 2., 0.]])
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if not 0 < in_features <= out_features:
            raise ValueError(f"ZeroPad: expected 0 < in_features <= out_features, got {in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return nn.functional.pad(u, (0, self.out_features - self.in_features))

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return x[..., : self.in_features]

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _zeros(u)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"


class ScaleShift(ConformalLayer):
    r"""Similarity :math:`x = a u + b` with one scalar :math:`a = e^s > 0`; :math:`\lambda = a`.

    Arguments:
        features: the dimension ``D``.
        log_scale: the initial :math:`s` (default 0).
        shift: the initial :math:`b`, shape ``(D,)`` (default 0).
    """

    def __init__(self, features: int, *, log_scale: float = 0.0, shift: Tensor | None = None) -> None:
        super().__init__()
        self.in_features = self.out_features = features
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        self.shift = nn.Parameter(torch.zeros(features) if shift is None else torch.as_tensor(shift, dtype=torch.get_default_dtype()).clone())

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return u * self.log_scale.exp() + self.shift

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return (x - self.shift) * torch.exp(-self.log_scale)

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return self.log_scale.expand(u.shape[:-1])


class Orthogonal(ConformalLayer):
    r"""Rotation or reflection :math:`x = Q u`, :math:`Q^T Q = I`; :math:`\lambda = 1`.

    ``Q`` stays orthogonal through :func:`torch.nn.utils.parametrizations.orthogonal`; it starts at
    the identity, or at ``init`` when given.

    Arguments:
        features: the dimension ``D``.
        init: an initial orthogonal matrix, shape ``(D, D)``.
    """

    def __init__(self, features: int, *, init: Tensor | None = None) -> None:
        super().__init__()
        self.in_features = self.out_features = features
        linear = nn.Linear(features, features, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.eye(features))
        self.linear = orthogonal(linear)
        if init is not None:
            init = torch.as_tensor(init, dtype=self.linear.weight.dtype)
            if init.shape != (features, features):
                raise ValueError(f"Orthogonal: init expected shape ({features}, {features}), got {tuple(init.shape)}")
            if not torch.allclose(init.T @ init, torch.eye(features, dtype=init.dtype), atol=1e-5):
                raise ValueError("Orthogonal: init expected an orthogonal matrix, got Q with Q^T Q != I")
            with torch.no_grad():
                self.linear.weight = init

    @property
    def matrix(self) -> Tensor:
        """The orthogonal matrix ``Q``, shape ``(D, D)``."""
        return self.linear.weight

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return u @ self.matrix.T

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return x @ self.matrix

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _zeros(u)


def _special_conformal(u: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""The special conformal map and its log factor for ``b`` of shape ``(D,)`` or ``(N, D)``.

    :math:`x = (u - b \|u\|^2) / \sigma` with :math:`\sigma = 1 - 2 b \cdot u + \|b\|^2 \|u\|^2`,
    and :math:`\lambda = 1 / \sigma`, since the map is inversion, translation by :math:`-b`,
    inversion, whose factors are :math:`\|u\|^{-2}`, 1 and :math:`\|u\|^2 / \sigma`.
    """
    uu = (u * u).sum(-1, keepdim=True)
    sigma = 1 - 2 * (b * u).sum(-1, keepdim=True) + (b * b).sum(-1, keepdim=True) * uu
    return (u - b * uu) / sigma, -torch.log(sigma).squeeze(-1)


class SpecialConformal(ConformalLayer):
    r"""Special conformal transformation (a Möbius map fixing the origin and infinity's preimage).

    .. math:: x = \frac{u - b \|u\|^2}{1 - 2 b \cdot u + \|b\|^2 \|u\|^2},
              \qquad \lambda(u) = \frac{1}{1 - 2 b \cdot u + \|b\|^2 \|u\|^2}.

    These maps form a group with :math:`b` adding up, so the inverse is the same map with
    :math:`-b`. With :math:`b` normal to a padded plane, the plane is bent into the sphere of radius
    :math:`1 / (2\|b\|)` tangent to it at the origin. The point :math:`u = b / \|b\|^2` is sent to
    infinity.

    Arguments:
        features: the dimension ``D``.
        b: the initial :math:`b`, shape ``(D,)`` (default 0, the identity).
    """

    def __init__(self, features: int, *, b: Tensor | None = None) -> None:
        super().__init__()
        self.in_features = self.out_features = features
        self.b = nn.Parameter(torch.zeros(features) if b is None else torch.as_tensor(b, dtype=torch.get_default_dtype()).clone())

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(u, self.b)[0]

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(x, -self.b)[0]

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(u, self.b)[1]

    def forward_and_log_factor(self, u: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _special_conformal(u, self.b)


def _distinct_rows(c: Tensor) -> tuple[Tensor, int]:
    """``(inverse, count)``: row ``i`` of ``c`` ``(N, C)`` is the ``inverse[i]``-th of its ``count`` distinct rows
    (rows equal in every column). One column at a time with one-dimensional ``torch.unique``, many times faster on
    a CPU than ``torch.unique(c, dim=0)``; the running key stays below ``N²``, so it never overflows."""
    n = c.shape[0]
    key = torch.zeros(n, dtype=torch.int64, device=c.device)
    for column in c.unbind(-1):
        _, code = torch.unique(column, return_inverse=True)
        _, key = torch.unique(key * n + code, return_inverse=True)
    return key, int(key.max()) + 1 if n else 0


def per_context(fn, c: Tensor) -> Tensor:
    """``fn(c)`` computed once per distinct row of ``c`` ``(N, C)`` and gathered back to its ``N`` rows.

    A chart mixture evaluates every point at several charts and conditions each row on its chart's code,
    so ``N`` rows hold at most ``K`` distinct contexts; a rotation's matrix exponential then costs ``K``
    instead of ``N``. The distinct rows are taken from ``c`` itself (its first occurrences), so gradients
    reach ``c``; where most rows differ, ``fn`` runs on ``c`` as it is.
    """
    if c.shape[0] < 2 or c.dim() != 2:
        return fn(c)
    inverse, distinct = _distinct_rows(c.detach())
    if 2 * distinct > c.shape[0]:
        return fn(c)
    rows = torch.arange(c.shape[0], device=c.device)
    first = torch.full((distinct,), c.shape[0], dtype=rows.dtype, device=c.device).scatter_reduce(
        0, inverse, rows, reduce="amin")
    return fn(c[first])[inverse]


class _Conditional(ConformalLayer):
    """A layer whose ``P`` parameters are ``MLP(c)``, ``(N, C) -> (N, P)``, zero at initialisation."""

    def __init__(self, features: int, context: int, parameters: int, hidden_features: Sequence[int]) -> None:
        super().__init__()
        if context < 1:
            raise ValueError(f"{type(self).__name__}: expected context >= 1, got {context}")
        self.in_features = self.out_features = features
        self.context = context
        self.hyper = MLP(context, parameters, hidden_features=hidden_features)
        # A zero last layer makes the map the identity for every context, whatever the hidden weights.
        last = self.hyper[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def params(self, c: Tensor | None) -> Tensor:
        if c is None:
            raise ValueError(f"{type(self).__name__}: expected a context of shape (N, {self.context}), got None")
        return self.hyper(c)


class ConditionalScaleShift(_Conditional):
    r"""Per-point similarity :math:`x = a(c)\, u + b(c)`, :math:`a = e^{s(c)}`; :math:`\lambda = a(c)`.

    Arguments:
        features: the dimension ``D``.
        context: the context dimension ``C``.
        hidden_features: the hypernetwork's hidden widths.
    """

    def __init__(self, features: int, context: int, hidden_features: Sequence[int] = (32, 32)) -> None:
        super().__init__(features, context, 1 + features, hidden_features)

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        s, b = self.params(c).split((1, self.in_features), dim=-1)
        return u * s.exp() + b

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        s, b = self.params(c).split((1, self.in_features), dim=-1)
        return (x - b) * torch.exp(-s)

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return self.params(c)[..., 0]

    def forward_and_log_factor(self, u: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, b = self.params(c).split((1, self.in_features), dim=-1)
        return u * s.exp() + b, s.squeeze(-1)


class ConditionalRotation(_Conditional):
    r"""Per-point rotation :math:`x = Q(c)\, u` with :math:`Q = \exp(A - A^T)`; :math:`\lambda = 1`.

    The matrix exponential of a skew-symmetric matrix is a rotation (``det Q = 1``), and every
    rotation is reached; ``A`` is strictly upper triangular with ``D (D - 1) / 2`` entries from
    the hypernetwork.

    Arguments:
        features: the dimension ``D``.
        context: the context dimension ``C``.
        hidden_features: the hypernetwork's hidden widths.
    """

    def __init__(self, features: int, context: int, hidden_features: Sequence[int] = (32, 32)) -> None:
        if features < 2:
            raise ValueError(f"ConditionalRotation: expected features >= 2, got {features}")
        super().__init__(features, context, features * (features - 1) // 2, hidden_features)
        self.register_buffer("rows", torch.triu_indices(features, features, offset=1), persistent=False)

    def matrix(self, c: Tensor) -> Tensor:
        """The rotations ``Q(c)``, shape ``(N, D, D)`` (one matrix exponential per distinct context)."""
        if c is None:
            self.params(c)  # the error for a missing context
        return per_context(self._matrix, c)

    def _matrix(self, c: Tensor) -> Tensor:
        theta = self.hyper(c)
        a = theta.new_zeros(*theta.shape[:-1], self.in_features, self.in_features)
        a[..., self.rows[0], self.rows[1]] = theta
        return torch.linalg.matrix_exp(a - a.transpose(-1, -2))

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return (self.matrix(c) @ u.unsqueeze(-1)).squeeze(-1)

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return (x.unsqueeze(-2) @ self.matrix(c)).squeeze(-2)

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _zeros(u)


class ConditionalSpecialConformal(_Conditional):
    r"""Per-point special conformal transformation with :math:`b = b(c)`; see :class:`SpecialConformal`.

    Arguments:
        features: the dimension ``D``.
        context: the context dimension ``C``.
        hidden_features: the hypernetwork's hidden widths.
    """

    def __init__(self, features: int, context: int, hidden_features: Sequence[int] = (32, 32)) -> None:
        super().__init__(features, context, features, hidden_features)

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(u, self.params(c))[0]

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(x, -self.params(c))[0]

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return _special_conformal(u, self.params(c))[1]

    def forward_and_log_factor(self, u: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _special_conformal(u, self.params(c))


class ConformalEmbedding(ConformalLayer):
    r"""Composition :math:`c = c_J \circ \dots \circ c_1` of conformal layers (first layer first).

    :math:`\log \lambda(u) = \sum_j \log \lambda_j(u_{j-1})`, evaluated along the chain from ``u``;
    the left inverse runs the layers' inverses backwards.

    Arguments:
        layers: the layers, each ``out_features`` matching the next ``in_features``.

    Example:
        >>> emb = ConformalEmbedding([ZeroPad(2, 3), SpecialConformal(3), Orthogonal(3), ScaleShift(3)])
        >>> u = torch.randn(5, 2)
        >>> x, log_lambda = emb.forward_and_log_factor(u)
        >>> x.shape, log_lambda.shape
        (torch.Size([5, 3]), torch.Size([5]))
        >>> torch.allclose(emb.inverse(x), u)
        True
    """

    def __init__(self, layers: Iterable[ConformalLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("ConformalEmbedding: expected at least one layer, got none")
        for i, (a, b) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"ConformalEmbedding: layer {i} gives {a.out_features} features but layer {i + 1} expects {b.in_features}"
                )
        self.in_features = self.layers[0].in_features
        self.out_features = self.layers[-1].out_features
        contexts = {layer.context for layer in self.layers} - {0}
        if len(contexts) > 1:
            raise ValueError(f"ConformalEmbedding: expected one context dimension, got {sorted(contexts)}")
        self.context = contexts.pop() if contexts else 0

    def forward(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            u = layer(u, c)
        return u

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            x = layer.inverse(x, c)
        return x

    def log_factor(self, u: Tensor, c: Tensor | None = None) -> Tensor:
        return self.forward_and_log_factor(u, c)[1]

    def forward_and_log_factor(self, u: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = _zeros(u)
        for layer in self.layers:
            u, log_lambda = layer.forward_and_log_factor(u, c)
            total = total + log_lambda
        return u, total
