"""VQ-Flow: a mixture of local normalizing flows over learned charts (paper §4.2–4.3).

``p(x) = Σ_k p_k p(x | k)`` with ``p(x | k) = p_flow(A_k (x - μ_k) | v_k) · |det A_k|``: one
conditional flow shared by all K charts, conditioned on the chart's encoded centre ``v_k``, behind a
fixed per-chart frame (:mod:`vqflows.frames`). With ``charts=None`` the same flow, unconditioned and
behind one global frame, is the plain baseline.

Letters: N points, D data dimension, d manifold dimension (``D`` for full flows), K charts,
C context (code) dimension.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from . import flows
from .charts import PARTITIONS, chart_weights, membership, nearest
from .checks import as_points, one_of, positive_int
from .frames import ChartFrames

LOG_PROB_MODES = ("mixture", "charts")
ENCODE_MODES = ("map", "expected", "sample")


class VQFlow(nn.Module):
    r"""A VQ-Flow on ``R^D``.

    Arguments:
        features: ``D``.
        flow: base flow, ``"realnvp"``, ``"maf"``, ``"nsf"``, ``"cef"`` (a learned d-manifold), or
            ``"sphere"`` (a CEF on the fixed unit sphere, for directional data; density w.r.t. area).
        charts: ``K``, or ``None`` for the plain flow (one global chart, no context).
        partition: ``"vqae"`` (VQ autoencoder) or ``"kmeans"`` (k-means in data space).
        latent: code dimension ``C`` of the VQ-AE (default 3: a 2-D code space cannot hold a sphere
            and folds long curves so that one code cell catches pieces of several turns).
        m, eps: membership — the ``m`` nearest codes, enlarged by ``ε`` (``m=1, ε=0``: hard boundary).
        transforms, hidden_features: size of the flow.
        manifold_dim: ``d`` for ``flow="cef"``.
        frames: whether each chart gets its own fitted frame (else one global frame for all).
        flow_options: further keyword arguments for the flow (e.g. CEF's ``alpha``, ``beta``).

    Example:
        >>> model = VQFlow(features=3, flow="maf", charts=32)
        >>> history = vqflows.fit(model, train, val)
        >>> model.log_prob(test).mean()
    """

    def __init__(self, features: int, flow: str = "maf", charts: int | None = 32, *,
                 partition: str = "vqae", latent: int = 3, m: int = 1, eps: float = 0.0,
                 transforms: int = 5, hidden_features: Sequence[int] = (64, 64),
                 vq_hidden: Sequence[int] = (64, 64), manifold_dim: int = 2, frames: bool = True,
                 flow_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        positive_int(features, name="features")
        one_of(flow, flows.FLOWS, name="flow")
        one_of(partition, PARTITIONS, name="partition")
        if charts is not None:
            positive_int(charts, name="charts")
            positive_int(m, name="m")
            if m > charts:
                raise ValueError(f"m: expected at most charts={charts}, got {m}")
        if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
        if flow == "cef" and not 1 <= manifold_dim < features:
            raise ValueError(f"manifold_dim: expected 1 <= d < features={features}, got {manifold_dim}")
        self.config = dict(features=features, flow=flow, charts=charts, partition=partition, latent=latent,
                           m=m, eps=float(eps), transforms=transforms, hidden_features=list(hidden_features),
                           vq_hidden=list(vq_hidden), manifold_dim=manifold_dim, frames=frames,
                           flow_options=dict(flow_options or {}))
        self.features = features
        self.K = charts or 1
        self.m, self.eps = min(m, self.K), float(eps)
        if self.K == 1:  # one chart needs no partition: the plain flow
            self.partition = None
        elif partition == "vqae":
            self.partition = PARTITIONS[partition](features, charts, latent, hidden=tuple(vq_hidden))
        else:
            self.partition = PARTITIONS[partition](features, charts)
        ctx = 0 if self.partition is None else self.partition.latent
        options = dict(transforms=transforms, hidden_features=tuple(hidden_features), **(flow_options or {}))
        if flow == "cef":
            options["manifold_dim"] = manifold_dim
        self.flow = flows.build(flow, features, ctx, **options)
        self.manifold_dim = self.flow.manifold_dim
        self.frames = ChartFrames(self.K, features)
        self.register_buffer("log_weights", torch.full((self.K,), -math.log(self.K)))
        self.register_buffer("contexts", torch.zeros(self.K, ctx))

    # ------------------------------------------------------------------ charts
    def chart_distances(self, x: Tensor) -> Tensor:
        """Squared distances to the K chart centres, ``(N, D) -> (N, K)``."""
        if self.partition is None:
            return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return self.partition.distances(x)

    def membership(self, x: Tensor) -> Tensor:
        """Which charts contain each point, ``(N, D) -> (N, K)`` bool."""
        x = as_points(x, self.features)
        return membership(self.chart_distances(x), self.m, self.eps)

    def assign(self, x: Tensor) -> Tensor:
        """Nearest chart of each point, ``(N, D) -> (N,)`` long."""
        x = as_points(x, self.features)
        return nearest(self.chart_distances(x))

    @property
    def weights(self) -> Tensor:
        """Chart weights ``p_k``, ``(K,)``."""
        return self.log_weights.exp()

    def fit_charts(self, x: Tensor, *, seed: int = 0, epochs: int = 30, progress=None) -> list[float]:
        """Stage 1: learn the chart centres (VQ-AE or k-means) on ``x`` ``(N, D)``."""
        x = as_points(x, self.features, min_points=max(self.K, 2))
        if self.partition is None:
            return []
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.partition.fit(x, seed=seed, epochs=epochs, progress=progress)

    @torch.no_grad()
    def fit_weights(self, x: Tensor) -> None:
        """Stage 2: chart weights ``p_k`` (equation 15), chart frames and normalised contexts."""
        x = as_points(x, self.features, min_points=max(self.K, 2))
        member = self.membership(x)
        self.log_weights.copy_(chart_weights(member).clamp_min(1e-12).log().to(self.log_weights.dtype))
        sim = self.manifold_dim if self.flow.conformal else None
        if self.config["flow"] == "sphere":
            self.frames.fit_rotations(x, member if self.config["frames"] else torch.ones_like(member))
        elif self.config["frames"]:
            self.frames.fit(x, member, similarity_dim=sim)
        else:
            self.frames.fit(x, torch.ones(x.shape[0], self.K, dtype=torch.bool), similarity_dim=sim)
        if self.contexts.shape[1]:
            v = self.partition.centres.detach()
            self.contexts.copy_((v - v.mean(0)) / v.std().clamp_min(1e-8))

    # ------------------------------------------------------------- densities
    def _chart_log_prob(self, x: Tensor, k: Tensor) -> Tensor:
        """``log p(x_i | k_i)`` for rows ``(M, D), (M,) -> (M,)``, in one pass of the flow."""
        y = self.frames(x, k)
        return self.flow.log_prob(y, self._context(k)) + self.frames.logdet[k]

    def _context(self, k: Tensor) -> Tensor | None:
        return self.contexts[k] if self.contexts.shape[1] else None

    def chart_log_prob(self, x: Tensor, *, chunk: int = 65536) -> Tensor:
        """``log p(x | k)`` under every chart, ``(N, D) -> (N, K)``: one batched pass over ``(N K)`` rows."""
        x = as_points(x, self.features)
        rows = max(1, chunk // self.K)
        out = []
        for xs in x.split(rows):
            n = xs.shape[0]
            k = torch.arange(self.K, device=xs.device).repeat(n)
            out.append(self._chart_log_prob(xs.repeat_interleave(self.K, 0), k).view(n, self.K))
        return torch.cat(out)

    def log_prob(self, x: Tensor, mode: str = "mixture", *, chunk: int = 65536) -> Tensor:
        r"""Exact log-density in data coordinates, ``(N, D) -> (N,)``.

        ``"mixture"``: ``log Σ_{k=1}^{K} p_k p(x | k)`` — a normalised density, consistent with
        :meth:`sample`, the one to report. ``"charts"``: ``log Σ_{k : x ∈ U_k} p_k p(x | k)``
        (equations 18/20), a lower bound that evaluates only the charts containing ``x``.
        """
        one_of(mode, LOG_PROB_MODES, name="mode")
        x = as_points(x, self.features)
        if mode == "mixture":
            return torch.logsumexp(self.chart_log_prob(x, chunk=chunk) + self.log_weights, dim=-1)
        return torch.logsumexp(self._member_log_joint(x), dim=-1)

    def _member_log_joint(self, x: Tensor) -> Tensor:
        """``log p_k + log p(x|k)`` on member charts and ``-inf`` elsewhere, ``(N, K)``."""
        member = membership(self.chart_distances(x), self.m, self.eps)
        i, k = member.nonzero(as_tuple=True)
        joint = torch.full(member.shape, -math.inf, dtype=x.dtype, device=x.device)
        joint[i, k] = self._chart_log_prob(x[i], k) + self.log_weights[k]
        return joint

    def loss(self, x: Tensor, k: Tensor) -> Tensor:
        """Training loss of points ``(N, D)`` in their drawn charts ``(N,)``: ``-log p(x|k)`` plus penalties, ``(N,)``."""
        y = self.frames(x, k)
        return self.flow.loss(y, self._context(k)) - self.frames.logdet[k]

    def reconstruction(self, x: Tensor) -> Tensor:
        """Squared distance from each point to its nearest chart's model manifold, ``(N,)`` (0 for full flows)."""
        x = as_points(x, self.features)
        k = nearest(self.chart_distances(x))
        y = self.frames(x, k)
        return self.flow.reconstruction(y, self._context(k)) * self.frames.scale2(k)

    def penalty(self, x: Tensor) -> Tensor:
        """The training loss's penalty beyond ``-log p`` on each point's nearest chart, ``(N,)``.

        ``(β/α)·||y - c(c†(y))||²`` in chart coordinates for embedding flows, 0 for full flows; early
        stopping subtracts it so that it watches the quantity training minimises.
        """
        beta = getattr(self.flow, "beta", 0.0) / getattr(self.flow, "alpha", 1.0)
        if self.flow.manifold_dim == self.features or beta == 0.0:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        k = nearest(self.chart_distances(x))
        return beta * self.flow.reconstruction(self.frames(x, k), self._context(k))

    # ------------------------------------------------------ sampling, inference
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, seed: int | None = None,
               return_charts: bool = False):
        """Draw ``k ~ p_k``, ``z ~ N(0, I_d)``, ``x = g_k(z)``: returns ``(n, D)`` (and ``(n,)`` charts)."""
        positive_int(n, name="n")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        ref = self.log_weights
        k = torch.multinomial(self.weights.cpu().double(), n, replacement=True, generator=generator).to(ref.device)
        z = torch.randn(n, self.manifold_dim, generator=generator, dtype=torch.float64).to(ref.device, ref.dtype)
        x = self.frames.inverse(self.flow.forward(z, self._context(k)), k)
        return (x, k) if return_charts else x

    def decode(self, z: Tensor, k: Tensor) -> Tensor:
        """``x = g_k(z)``: ``(N, d), (N,) -> (N, D)``."""
        return self.frames.inverse(self.flow.forward(z, self._context(k)), k)

    def encode(self, x: Tensor, mode: str = "map", *, generator: torch.Generator | None = None,
               return_charts: bool = False):
        r"""Latent codes ``z = f_k(x)``, ``(N, D) -> (N, d)`` (and the charts used, ``(N,)``).

        ``"map"``: the most probable chart ``argmax_{k: x ∈ U_k} p(k | x)``; ``"expected"``:
        ``Σ_k p(k | x) f_k(x)``; ``"sample"``: ``k ~ p(k | x)``. ``p(k | x)`` is equation 12.
        With hard charts all three agree.
        """
        one_of(mode, ENCODE_MODES, name="mode")
        x = as_points(x, self.features)
        post = torch.softmax(self._member_log_joint(x), dim=-1)  # p(k | x), (N, K)
        if mode == "expected":
            n = x.shape[0]
            i, k = (post > 0).nonzero(as_tuple=True)
            zk = self.flow.inverse(self.frames(x[i], k), self._context(k))
            z = torch.zeros(n, zk.shape[-1], dtype=zk.dtype, device=zk.device)
            z.index_add_(0, i, zk * post[i, k, None])
            charts = post.argmax(-1)
            return (z, charts) if return_charts else z
        if mode == "map":
            charts = post.argmax(-1)
        else:
            charts = torch.multinomial(post.double().cpu(), 1, generator=generator).flatten().to(x.device)
        z = self.flow.inverse(self.frames(x, charts), self._context(charts))
        return (z, charts) if return_charts else z

    # ----------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.pt`` (a ``state_dict``) into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write(path / "config.json", json.dumps(self.config, indent=2).encode())
        tmp = path / "weights.pt.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path / "weights.pt")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> "VQFlow":
        """Rebuild a model saved by :meth:`save` (also accepts a run folder holding ``model/``)."""
        path = Path(path)
        if (path / "model" / "config.json").exists():
            path = path / "model"
        if not (path / "config.json").exists() or not (path / "weights.pt").exists():
            raise ValueError(f"path: expected a folder with config.json and weights.pt, got {str(path)!r}")
        config = json.loads((path / "config.json").read_text())
        model = cls(**config)
        state = torch.load(path / "weights.pt", map_location=map_location, weights_only=True)
        model.load_state_dict(state)
        return model.to(map_location)

    def extra_repr(self) -> str:
        c = self.config
        return f"flow={c['flow']!r}, charts={c['charts']}, partition={c['partition']!r}, m={c['m']}, eps={c['eps']}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(features: int, flow: str = "maf", charts: int | None = 32, **options: Any) -> VQFlow:
    """A VQ-Flow on ``R^features`` from option names (``flow``, ``charts``, ``partition``, ``m``, ...)."""
    return VQFlow(features, flow, charts, **options)
