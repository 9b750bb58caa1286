"""The training objectives and the early-stopping score.

* ``"cells"`` (paper eq. 17): ``-log p(x | k)`` with each point in its chart ``k`` (hard boundaries),
  or in a chart drawn among those containing it, ``k ~ p_k / Σ_{j: x ∈ U_j} p_j`` (soft charts);
* ``"mixture"``: the mixture likelihood itself over each point's ``top`` nearest charts,
  ``-log Σ_{k ∈ top(x)} p_k p(x | k)``, with the weights ``p_k`` learned beside the flow
  (``learn_weights``) — the model that is trained is the one that is scored. With ``top = K`` it is the
  exact negative log-likelihood; with fewer charts it is an upper bound of it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..charts import membership
from ..frames import trim_threshold
from ..model import VQFlow


class Objective(nn.Module):
    """The per-point training loss as a module (what ``DistributedDataParallel`` wraps).

    ``logits``: the learned chart weights' logits (mixture objective), or ``None`` for the model's weights.
    """

    def __init__(self, model: VQFlow, kind: str, logits: nn.Parameter | None) -> None:
        super().__init__()
        self.model, self.kind, self.logits = model, kind, logits

    def log_weights(self) -> Tensor | None:
        return None if self.logits is None else torch.log_softmax(self.logits, 0)

    def forward(self, x: Tensor, charts: Tensor) -> Tensor:
        if self.kind == "cells":
            return self.model.loss(x, charts)
        return self.model.mixture_loss(x, charts, self.log_weights())


@torch.no_grad()
def assign_charts(model: VQFlow, x: Tensor, objective: str, top: int) -> Tensor:
    """The charts each point trains: its ``top`` nearest ``(N, top)`` (mixture), or its member charts
    ``(N, K)`` as a mask with the strays dropped (cells)."""
    if objective == "mixture":
        return model.chart_distances(x).topk(min(top, model.K), dim=-1, largest=False).indices
    return _drop_strays(model, x, membership(model.chart_distances(x), model.m, model.eps))


def epoch_charts(member: Tensor, objective: str, log_w: Tensor, gen: torch.Generator) -> Tensor:
    """The charts of an epoch: the assigned ones (mixture), or one drawn per point among its members."""
    return member if objective == "mixture" else _draw_charts(member, log_w, gen)


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


@torch.no_grad()
def check_score(model: VQFlow, val: Tensor, top: Tensor | None) -> tuple[float, float]:
    """The early-stopping check: ``(val log-likelihood, score)``, the score being the log-likelihood
    less the flow's mean penalty on each point's nearest chart.

    ``top``: each point's nearest charts ``(M, T)``, scored as a lower bound of the mixture
    (``log Σ_{k ∈ top(x)} p_k p(x | k)``); ``None`` scores the exact mixture.
    """
    if top is None:
        ll = float(model._log_prob(val).mean())
        return ll, ll - float(model.penalty(val).mean())
    joint, pen = model.log_joint(val, top)  # top[:, 0] is the nearest chart: its penalty is model.penalty's
    bound = float(torch.logsumexp(joint, -1).mean())
    return bound, bound - float(pen[:, 0].mean())


__all__ = ["Objective", "assign_charts", "epoch_charts", "check_score"]
