"""The training objectives and the early-stopping score.

* ``"cells"`` (paper eq. 17): ``-log p(x | k)`` with each point in its chart ``k`` (hard boundaries),
  or in a chart drawn among those containing it, ``k ~ p_k / Σ_{j: x ∈ U_j} p_j`` (soft charts);
* ``"mixture"``: the mixture likelihood itself over each point's ``top`` nearest charts,
  ``-log Σ_{k ∈ top(x)} p_k p(x | k)``, with the weights ``p_k`` learned beside the flow
  (``learn_weights``) — the model that is trained is the one that is scored. With ``top = K`` it is the
  exact negative log-likelihood; with fewer charts it is an upper bound of it.

Both are functions of the model (:func:`cell_loss`, :func:`mixture_loss`), built on one pass of its
flow at the given charts (:meth:`~vqflows.model.VQFlow.log_joint`), which also yields the flow's
penalty (:func:`nearest_penalty`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..charts import membership
from ..frames import trim_threshold
from ..model import VQFlow


def cell_loss(model: VQFlow, x: Tensor, k: Tensor) -> Tensor:
    """Hard-cell training loss of points ``(N, D)`` in their charts ``(N,)``: ``-log p(x | k)`` plus the
    flow's penalty, ``(N,)`` (paper eq. 17)."""
    # zero log-weights: the joint is the conditional density log p(x | k) itself
    log_p, penalty = model.log_joint(x, k[:, None], model.log_weights.new_zeros(model.K))
    return penalty[:, 0] - log_p[:, 0]


def mixture_loss(model: VQFlow, x: Tensor, charts: Tensor, log_weights: Tensor | None = None) -> Tensor:
    r"""Mixture training loss ``-log Σ_{k ∈ charts(x)} p_k p(x | k)`` plus the responsibility-weighted
    penalty, ``(N, D), (N, m) -> (N,)``; with all K charts it is the exact negative log-likelihood.
    ``log_weights`` ``(K,)`` replaces the model's chart weights (e.g. the ones being learned)."""
    joint, penalty = model.log_joint(x, charts, log_weights)
    nll = -torch.logsumexp(joint, dim=-1)
    if penalty.requires_grad or bool(penalty.any()):
        nll = nll + (torch.softmax(joint, dim=-1).detach() * penalty).sum(-1)
    return nll


def nearest_penalty(model: VQFlow, x: Tensor) -> Tensor:
    """The training loss's penalty beyond ``-log p`` of the model's points ``x`` ``(N, D)`` on each one's
    nearest chart, ``(N,)`` (zero for full flows); early stopping subtracts it so that it watches what
    training minimises."""
    return model.log_joint(x, model.assign(x)[:, None])[1][:, 0]


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
            return cell_loss(self.model, x, charts)
        return mixture_loss(self.model, x, charts, self.log_weights())


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
def exact_check(model: VQFlow, val: Tensor) -> tuple[Tensor, float]:
    """The exact check's log-densities of ``val`` ``(M, D)``, ``(M,)`` (the mixture over every chart, as
    :meth:`~vqflows.model.VQFlow.log_prob`), and its score: their mean less the flow's mean penalty."""
    log_p = torch.logsumexp(model.chart_log_prob(val) + model.log_weights, dim=-1)
    ll = float(log_p.mean())
    # a flow without a penalty (full flows, the fixed sphere) needs no second pass to learn that it is zero
    return log_p, ll - float(nearest_penalty(model, val).mean()) if model.flow.penalised else ll


@torch.no_grad()
def check_score(model: VQFlow, val: Tensor, top: Tensor | None) -> tuple[float, float]:
    """The early-stopping check: ``(val log-likelihood, score)``, the score being the log-likelihood
    less the flow's mean penalty on each point's nearest chart.

    ``top``: each point's nearest charts ``(M, T)``, scored as a lower bound of the mixture
    (``log Σ_{k ∈ top(x)} p_k p(x | k)``); ``None`` scores the exact mixture.
    """
    if top is None:
        log_p, score = exact_check(model, val)
        return float(log_p.mean()), score
    joint, pen = model.log_joint(val, top)  # top[:, 0] is the nearest chart: its penalty is nearest_penalty's
    bound = float(torch.logsumexp(joint, -1).mean())
    return bound, bound - float(pen[:, 0].mean())


__all__ = ["cell_loss", "mixture_loss", "nearest_penalty", "Objective", "assign_charts", "epoch_charts", "check_score", "exact_check"]
