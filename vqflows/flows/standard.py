"""Full-dimensional base flows (RealNVP, MAF, NSF) from zuko, behind the chart-map contract.

Each is a bijection of ``R^D`` with a standard normal base ``q = N(0, I_D)``; zuko's transform runs
data to latent, so ``forward`` is its ``call_and_ladj`` and ``inverse`` that of its inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import zuko
from torch import Tensor, nn

from .base import ChartFlow, StandardNormal

#: zuko constructors by name; each takes ``(features, context, transforms=..., hidden_features=...)``.
ZUKO_FLOWS = {
    "realnvp": zuko.flows.RealNVP,
    "maf": zuko.flows.MAF,
    "nsf": zuko.flows.NSF,
}


class ZukoFlow(ChartFlow):
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
        >>> z, ladj = flow(torch.randn(4, 3), torch.randn(4, 2))
        >>> z.shape, ladj.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    def __init__(self, kind: str, features: int, context: int = 0, *, transforms: int = 5,
                 hidden_features: Sequence[int] = (64, 64), **kwargs) -> None:
        super().__init__()
        self.kind = kind
        self.features = features
        self.context = context
        self.manifold_dim = features
        self.base = StandardNormal(features)
        self.flow = ZUKO_FLOWS[kind](features, context, transforms=transforms,
                                     hidden_features=tuple(hidden_features), **kwargs)

    @torch.no_grad()
    def zero_init(self) -> ZukoFlow:
        """Zero the output layer of every transform's conditioner, so the flow is the identity
        (``z = x``, ``log|det J| = 0``) whatever the context, until it trains; returns ``self``."""
        for module in self.flow.modules():
            hyper = getattr(module, "hyper", None)
            if isinstance(hyper, nn.Module):
                last = [m for m in hyper.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)][-1]
                last.weight.zero_()
                if getattr(last, "bias", None) is not None:
                    last.bias.zero_()
        return self

    def _transform(self, c: Tensor | None):
        return self.flow(c if self.context else None).transform

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(c).call_and_ladj(x)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(c).inv.call_and_ladj(z)
