"""Several atlases as one density: ``p(x) = Σ_j w_j p_j(x)`` over VQ-Flows ``p_j`` (:class:`VQFlowEnsemble`).

Each member is a VQ-Flow, ``p_j(x) = Σ_k p_jk p_j(x | k)``, so the weighted sum is again a mixture of
chart densities, over the union of the members' charts with weights ``w_j p_jk``: an atlas whose charts
come at several resolutions (8, 16, 32 and 64 charts, each drawn twice, for the default ``vq-maf``), each chart map from its
own member's flow. Everything stays exact: the log-density is the log-sum over every chart of every
member, and sampling draws a member, then a chart, then a latent.

Members trained independently make different errors (their charts cut the data in different places),
and averaging densities averages those errors away: on the paper's sets the stacked union of the
atlases is closer to the true density than its best member (docs/results.md). The weights are chosen on
validation data (:func:`stacking_weights`, stacked density estimation) or left equal.

Example:
    >>> import vqflows
    >>> a = vqflows.build(3, "maf", charts=2, transforms=1, hidden_features=(8,))
    >>> b = vqflows.build(3, "maf", charts=4, transforms=1, hidden_features=(8,))
    >>> both = VQFlowEnsemble([a, b])
    >>> both.K, both.log_prob(torch.randn(5, 3)).shape, both.sample(7, seed=0).shape
    (6, torch.Size([5]), torch.Size([7, 3]))
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import persistence
from .distribution import VQFlowDistribution
from .io import write_json
from .model import CHUNK, VQFlow, sample_request

#: what :meth:`VQFlowEnsemble.save` writes as the recipe's name
PRESET = "ensemble"


class VQFlowEnsemble(nn.Module):
    r"""The mixture ``Σ_j w_j p_j(x)`` of VQ-Flows on the same ``R^D``: one chart mixture over all their charts.

    Arguments:
        members: the VQ-Flows (at least one, all on the same number of features).
        weights: the members' weights ``w_j`` (``None``: equal); positive, normalised here.

    The charts are numbered member by member: chart ``k`` of member ``j`` is chart
    ``K_0 + … + K_{j-1} + k`` of the ensemble, with weight ``w_j p_jk`` (:attr:`log_weights`).
    """

    def __init__(self, members: Sequence[VQFlow], weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, VQFlow) for m in members):
            raise ValueError(f"members: expected a non-empty sequence of VQFlow models, got {members!r}"[:200])
        features = {m.features for m in members}
        if len(features) != 1:
            raise ValueError(f"members: expected models on the same number of features, got {sorted(features)}")
        w = torch.full((len(members),), 1.0 / len(members), dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64).flatten().detach().cpu()
        if w.shape != (len(members),) or not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
            raise ValueError(f"weights: expected {len(members)} positive finite numbers, got {w.tolist()}")
        self.members = nn.ModuleList(members)
        self.features = members[0].features
        self.manifold_dim = max(m.manifold_dim for m in members)
        self.K = sum(m.K for m in members)
        ref = members[0].log_weights
        self.register_buffer("log_mix", (w / w.sum()).log().to(ref.dtype))

    # ------------------------------------------------------------------ the mixture of mixtures
    @property
    def _ref(self) -> Tensor:
        return self.members[0].log_weights

    @property
    def spec(self) -> dict[str, Any]:
        """The recipe :meth:`save` writes: the members' recipes and the weights."""
        return {"preset": PRESET, "members": [m.spec for m in self.members], "weights": self.mix_weights.tolist()}

    @property
    def config(self) -> dict[str, Any]:
        """What the members share, with ``charts`` the list of their chart counts."""
        configs = [m.config for m in self.members]
        shared = {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs)}
        return {**shared, "charts": [m.K for m in self.members]}

    @property
    def member_charts(self) -> list[tuple[int, int]]:
        """Where each member's charts sit among the ensemble's: ``[(start, stop), ...]``, member by member."""
        out, start = [], 0
        for m in self.members:
            out.append((start, start + m.K))
            start += m.K
        return out

    @property
    def mix_weights(self) -> Tensor:
        """The members' weights ``w_j``, ``(J,)``."""
        return self.log_mix.exp()

    @property
    def log_weights(self) -> Tensor:
        """``log w_j p_jk`` of every chart of every member, ``(K,)``, member by member."""
        return torch.cat([lw + m.log_weights for lw, m in zip(self.log_mix, self.members)])

    @property
    def weights(self) -> Tensor:
        """Chart weights ``w_j p_jk``, ``(K,)``."""
        return self.log_weights.exp()

    def check_points(self, x, *, name: str = "x", min_points: int = 0) -> Tensor:
        """``x`` as ``(N, D)`` points in the members' dtype and device (:meth:`VQFlow.check_points`)."""
        return self.members[0].check_points(x, name=name, min_points=min_points)

    def chart_distances(self, x: Tensor) -> Tensor:
        """Every member's chart distances side by side, ``(N, D) -> (N, K)``."""
        return torch.cat([m.chart_distances(x) for m in self.members], dim=-1)

    def assign(self, x) -> Tensor:
        """The nearest chart of each point over all members' charts, ``(N, D) -> (N,)``."""
        with torch.no_grad():
            return self.chart_distances(self.check_points(x)).argmin(-1)

    def chart_log_prob(self, x, *, chunk: int = CHUNK, grad: bool | None = None) -> Tensor:
        """``log p_j(x | k)`` under every chart of every member, ``(N, D) -> (N, K)``."""
        return torch.cat([m.chart_log_prob(x, chunk=chunk, grad=grad) for m in self.members], dim=-1)

    def member_log_prob(self, x, *, chunk: int = CHUNK, grad: bool | None = None) -> Tensor:
        """``log p_j(x)`` of every member, ``(N, D) -> (N, J)``."""
        return torch.stack([m.log_prob(x, chunk=chunk, grad=grad) for m in self.members], dim=-1)

    def log_prob(self, x, *, chunk: int = CHUNK, grad: bool | None = None) -> Tensor:
        """Exact log-density ``log Σ_j w_j p_j(x)``, ``(N, D) -> (N,)`` (arguments as :meth:`VQFlow.log_prob`)."""
        return torch.logsumexp(self.member_log_prob(x, chunk=chunk, grad=grad) + self.log_mix, dim=-1)

    def log_prob_bound(self, x, charts: str = "nearest", *, top: int | None = None, chunk: int = CHUNK,
                       grad: bool | None = None) -> Tensor:
        """``log Σ_j w_j b_j(x)`` with ``b_j`` each member's :meth:`VQFlow.log_prob_bound`: a lower bound of
        :meth:`log_prob` (arguments as the members')."""
        bounds = [m.log_prob_bound(x, charts, top=top, chunk=chunk, grad=grad) for m in self.members]
        return torch.logsumexp(torch.stack(bounds, dim=-1) + self.log_mix, dim=-1)

    def forward(self, x) -> Tensor:
        """``log p(x)``."""
        return self.log_prob(x)

    def reconstruction(self, x) -> Tensor:
        """Squared distance of each point to the nearest of the members' model manifolds, ``(N,)`` (0 for full flows)."""
        return torch.stack([m.reconstruction(x) for m in self.members], dim=-1).min(-1).values

    # ------------------------------------------------------------------ sampling
    def _draw(self, shape, generator: torch.Generator | None, seed: int | None, return_charts: bool, keep: bool):
        shape, generator = sample_request(shape, generator, seed)
        n, ref = shape.numel(), self._ref
        j = torch.multinomial(self.mix_weights.cpu().double(), max(n, 1), replacement=True, generator=generator)[:n]
        x = ref.new_zeros(n, self.features)
        k = torch.zeros(n, dtype=torch.long, device=ref.device)
        offset = 0
        for i, member in enumerate(self.members):
            rows = (j == i).nonzero().flatten().to(ref.device)
            if len(rows):
                draw = member.rsample if keep else member.sample
                xs, ks = draw(len(rows), generator=generator, return_charts=True)
                x = x.index_copy(0, rows, xs.to(x.dtype)) if keep else x.index_copy_(0, rows, xs.to(x.dtype))
                k[rows] = ks + offset
            offset += member.K
        x = x.reshape(*shape, self.features)
        return (x, k.reshape(shape)) if return_charts else x

    def sample(self, sample_shape: Sequence[int] | int | torch.Size = torch.Size(), *,
               generator: torch.Generator | None = None, seed: int | None = None, return_charts: bool = False):
        """Draw a member ``j ~ w``, then from it (:meth:`VQFlow.sample`): ``(*sample_shape, D)`` (and the charts,
        numbered as in :attr:`log_weights`, with ``return_charts``)."""
        with torch.no_grad():
            return self._draw(sample_shape, generator, seed, return_charts, keep=False)

    def rsample(self, sample_shape: Sequence[int] | int | torch.Size = torch.Size(), *,
                generator: torch.Generator | None = None, seed: int | None = None, return_charts: bool = False):
        """Reparameterised :meth:`sample` (gradients reach the members' flows)."""
        return self._draw(sample_shape, generator, seed, return_charts, keep=True)

    def distribution(self) -> VQFlowDistribution:
        """This model as a :class:`torch.distributions.Distribution` with ``event_shape (D,)``."""
        return VQFlowDistribution(self)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` (the weights and the number of members) and each member's folder
        ``member-<j>/`` (:meth:`VQFlow.save`) into the folder ``path``."""
        path = persistence.folder(path)
        for j, member in enumerate(self.members):
            member.save(path / f"member-{j}")
        write_json(path / "config.json", {"format": 2, "preset": PRESET, "members": len(self.members),
                                          "weights": self.mix_weights.tolist()})
        # what another model saved here before: the folder now holds this ensemble alone
        (path / "weights.pt").unlink(missing_ok=True)
        for old in path.glob("member-*"):
            if not old.name.removeprefix("member-").isdigit() or int(old.name.removeprefix("member-")) >= len(self.members):
                shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VQFlowEnsemble:
        """Rebuild an ensemble saved by :meth:`save` (also accepts a run folder holding ``model/``)."""
        model = load(path, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"path: expected a saved ensemble (config.json and member-0/, ...), got a single VQFlow in {str(path)!r}")
        return model

    def extra_repr(self) -> str:
        return f"charts={[m.K for m in self.members]}, weights={[round(float(w), 3) for w in self.mix_weights]}"


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VQFlow | VQFlowEnsemble:
    """Any model saved by :meth:`VQFlow.save` or :meth:`VQFlowEnsemble.save`.

    Arguments:
        path: the model's folder, or a run folder holding ``model/``.
        map_location: the device to load the weights onto (``"cpu"``, ``"cuda"``, ...).
    """
    path = Path(path)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if not (path / "member-0" / "config.json").exists():
        return persistence.load(path, map_location=map_location)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config.json: expected a JSON ensemble recipe, got an unreadable file in {str(path)!r}") from e
    config = config if isinstance(config, dict) else {}
    count, weights = config.get("members"), config.get("weights")
    if config.get("preset") != PRESET or isinstance(count, bool) or not isinstance(count, int) \
            or not isinstance(weights, list) or len(weights) != count:
        raise ValueError(f"config.json: expected an ensemble recipe with its members and their weights, got {str(path)!r}")
    members = [persistence.load(path / f"member-{j}", map_location=map_location) for j in range(count)]
    return VQFlowEnsemble(members, weights).to(map_location).eval()


def stacking_weights(log_probs: Tensor, *, iterations: int = 200, tol: float = 1e-9) -> Tensor:
    """The weights ``w`` maximising ``Σ_i log Σ_j w_j p_j(x_i)`` on held-out points (stacked density estimation).

    ``log_probs``: ``(N, J)``, the members' log-densities of points none was trained on (the validation
    split). Expectation–maximisation from equal weights: the objective never decreases, and stops when it
    gains less than ``tol`` nats per point. Returns ``(J,)`` float64 weights summing to 1.
    """
    lp = torch.as_tensor(log_probs, dtype=torch.float64)
    if lp.dim() != 2 or not lp.shape[0] or not lp.shape[1]:
        raise ValueError(f"log_probs: expected a non-empty (N, J) array, got shape {tuple(lp.shape)}")
    if not bool(torch.isfinite(lp).all()):
        raise ValueError("log_probs: expected finite log-densities")
    w = torch.full((lp.shape[1],), 1.0 / lp.shape[1], dtype=torch.float64)
    last = -math.inf
    for _ in range(iterations):
        joint = lp + w.log()
        total = torch.logsumexp(joint, dim=-1)
        score = float(total.mean())
        w = torch.exp(joint - total[:, None]).mean(0).clamp_min(1e-12)
        w = w / w.sum()
        if score - last < tol:
            break
        last = score
    return w


__all__ = ["VQFlowEnsemble", "load", "stacking_weights"]
