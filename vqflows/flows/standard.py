"""Full-dimensional base flows (RealNVP, MAF, NSF) from zuko, behind the chart-map contract.

Each is a bijection ``g(.; c)`` of ``R^D`` with a standard normal base ``q = N(0, I_D)``:
``log p(x | c) = log q(f(x; c)) + log |det J_f(x; c)|``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import zuko
from torch import Tensor

from .base import ConditionalDensity

#: zuko constructors by name; each takes ``(features, context, transforms=..., hidden_features=...)``.
ZUKO_FLOWS = {
    "realnvp": zuko.flows.RealNVP,
    "maf": zuko.flows.MAF,
    "nsf": zuko.flows.NSF,
}


class ZukoFlow(ConditionalDensity):
    r"""A conditional zuko flow ``x = g(z; c)``, ``z ~ N(0, I_D)``.

    Contexts are always passed row by row, ``(N, C)`` beside ``(N, D)``: zuko 1.6 does not score points
    under several contexts by broadcasting for MAF/RealNVP, so callers expand to ``(N K, D)`` themselves.

    Arguments:
        kind: ``"realnvp"``, ``"maf"`` or ``"nsf"``.
        features: ``D``.
        context: ``C`` (0 for an unconditional flow).
        transforms: number of flow layers (the paper uses 5).
        hidden_features: widths of each layer's conditioner network.

    Example:
        >>> flow = ZukoFlow("maf", features=3, context=2)
        >>> flow.log_prob(torch.randn(4, 3), torch.randn(4, 2)).shape
        torch.Size([4])
    """

    def __init__(self, kind: str, features: int, context: int = 0, *, transforms: int = 5,
                 hidden_features: Sequence[int] = (64, 64), **kwargs) -> None:
        super().__init__()
        self.kind = kind
        self.features = features
        self.context = context
        self.manifold_dim = features
        self.flow = ZUKO_FLOWS[kind](features, context, transforms=transforms,
                                     hidden_features=tuple(hidden_features), **kwargs)

    def _dist(self, c: Tensor | None):
        return self.flow(c if self.context else None)

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        transform = self._dist(c).transform
        z, ladj = transform.call_and_ladj(x)
        log_q = -0.5 * (z.square().sum(-1) + self.features * math.log(2 * math.pi))
        return log_q + ladj

    def inverse(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self._dist(c).transform(x)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self._dist(c).transform.inv(z)

    def sample(self, c: Tensor | None = None, n: int | None = None) -> Tensor:
        rows = c.shape[0] if c is not None and self.context else n
        if rows is None:
            raise ValueError("sample: expected a context of shape (N, C) or a count n, got neither")
        ref = next(self.parameters())
        z = torch.randn(rows, self.features, dtype=ref.dtype, device=ref.device)
        return self.forward(z, c)
