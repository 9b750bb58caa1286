"""VQ-Flow: a mixture of local normalizing flows over learned charts (paper §4.2–4.3).

``p(x) = Σ_k p_k p(x | k)``. Chart ``k``'s map is the composition of a fixed affine frame
(:class:`~vqflows.frames.ChartFrames`) and one conditional flow shared by all K charts
(:class:`~vqflows.flows.ChartFlow`), conditioned on the chart's encoded centre ``v_k``; every map
returns ``(y, log|det J|)`` and the chart map adds them, so
``log p(x | k) = log q(z) + log|det ∂z/∂x|`` with ``z = f(A_k (x - μ_k); v_k)``. With no partition
the same flow, unconditioned and behind one global frame, is the plain baseline.

Letters: N points, D data dimension, d manifold dimension (``D`` for full flows), K charts,
C context (code) dimension, m charts per point.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from . import persistence
from .charts import membership, nearest
from .checks import as_points, fits_in_memory, one_of, positive_int, training_points
from .checks import seed as check_seed
from .distribution import VQFlowDistribution
from .flows.base import ChartFlow
from .frames import TRIM_LEVEL, ChartFrames

#: Which charts :meth:`VQFlow.log_prob_bound` sums: each point's nearest ones, or those containing it.
BOUND_CHARTS = ("nearest", "member")
ENCODE_MODES = ("map", "expected", "sample")
#: Rows of the flattened ``(N K)`` pass scored at once: large enough to keep the flow's kernels busy, small
#: enough that the buffers stay in the cache (chosen by measurement: ``test_log_prob_throughput`` in ``benchmarks/timing.py``, on the
#: documentation's page of measured choices).
CHUNK = 8192


def sample_request(shape: Sequence[int] | int | torch.Size, generator: torch.Generator | None,
                   seed: int | None) -> tuple[torch.Size, torch.Generator | None]:
    """A ``sample_shape`` (an int ``n`` means ``(n,)``) as a ``torch.Size``, and the generator to draw with
    (a new one seeded by ``seed`` when given); ``ValueError`` for shapes that are not sizes >= 0."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (positive_int(shape, name="n"),)
    try:
        shape = torch.Size(shape)
    except TypeError as e:
        raise ValueError(f"sample_shape: expected an int or a tuple of ints, got {shape!r}") from e
    if any(s < 0 for s in shape):
        raise ValueError(f"sample_shape: expected sizes >= 0, got {tuple(shape)}")
    if seed is not None:
        generator = torch.Generator().manual_seed(check_seed(seed))
    return shape, generator


class Partition(Protocol):
    """What a chart partitioner provides (:class:`~vqflows.charts.VQAutoencoder`, :class:`~vqflows.charts.KMeansCharts`)."""

    features: int  # D
    codes: int  # K
    latent: int  # C

    @property
    def centres(self) -> Tensor: ...  # (K, C)

    def distances(self, x: Tensor) -> Tensor: ...  # (N, D) -> (N, K)

    def fit(self, x: Tensor, *, seed: int = 0, epochs: int = 30, progress=None) -> list[float]: ...


class VQFlow(nn.Module):
    r"""A VQ-Flow on ``R^D``, composed from a chart-map flow, a partition and frames.

    Arguments:
        flow: the conditional flow shared by every chart (:class:`~vqflows.flows.ChartFlow`), with
            context dimension ``C`` equal to the partition's code dimension (0 without one).
        partition: the chart partitioner (``K`` charts), or ``None`` for one global chart.
        frames: the chart frames (default: identity frames, fitted in :func:`~vqflows.training.fit_chart_weights`).
        m, eps: membership — the ``m`` nearest codes, enlarged by ``ε`` (``m=1, ε=0``: hard boundary).
        local_frames: whether each chart gets its own fitted frame (else one global frame for all).
        trim: level of the χ²_D cut-off beyond which a chart's stray members are left out of its
            frame (:data:`~vqflows.frames.TRIM_LEVEL`; ``None`` keeps every member).

    Most users build one by name, :func:`vqflows.build` or :func:`vqflows.presets.create`, which
    also records the recipe that :meth:`save` writes.

    Example:
        >>> from vqflows.charts import VQAutoencoder
        >>> from vqflows.flows import ZukoFlow
        >>> model = VQFlow(ZukoFlow("maf", 3, context=3), VQAutoencoder(3, codes=8, latent=3))
        >>> model.K, model.log_prob(torch.randn(5, 3)).shape
        (8, torch.Size([5]))
    """

    def __init__(self, flow: ChartFlow, partition: Partition | None = None, *, frames: ChartFrames | None = None,
                 m: int = 1, eps: float = 0.0, local_frames: bool = True, trim: float | None = TRIM_LEVEL) -> None:
        super().__init__()
        if not isinstance(flow, ChartFlow):
            raise ValueError(f"flow: expected a vqflows.flows.ChartFlow, got {type(flow).__name__}")
        self.features = flow.features
        self.K = partition.codes if partition is not None else 1
        ctx = partition.latent if partition is not None else 0
        if partition is not None and partition.features != self.features:
            raise ValueError(f"partition: expected one on {self.features} features, got {partition.features}")
        if flow.context != ctx:
            raise ValueError(f"flow: expected context dimension {ctx} (the partition's code dimension), got {flow.context}")
        positive_int(m, name="m")
        if m > self.K:
            raise ValueError(f"m: expected at most charts={self.K}, got {m}")
        if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
        self.partition = partition
        self.flow = flow
        self.frames = frames if frames is not None else ChartFrames(self.K, self.features)
        if (self.frames.charts, self.frames.features) != (self.K, self.features):
            raise ValueError(f"frames: expected {self.K} charts on {self.features} features, "
                             f"got {self.frames.charts} on {self.frames.features}")
        self.m, self.eps = m, float(eps)
        self.local_frames, self.trim = local_frames, trim
        self.manifold_dim = flow.manifold_dim
        #: the recipe this model was built from, ``{"preset": name or None, "args": {...}}`` (see :mod:`vqflows.presets`)
        self.spec: dict[str, Any] | None = None
        self.register_buffer("log_weights", torch.full((self.K,), -math.log(self.K)))
        self.register_buffer("contexts", torch.zeros(self.K, ctx))

    @property
    def config(self) -> dict[str, Any]:
        """The arguments of the recipe that built this model (empty if built by hand)."""
        return dict(self.spec["args"]) if self.spec else {}

    @property
    def _ref(self) -> Tensor:
        return self.log_weights

    def check_points(self, x, *, name: str = "x", min_points: int = 0) -> Tensor:
        """``x`` (a tensor of any float dtype, a NumPy array or a nested list) as ``(N, D)`` in the model's dtype
        and device, checked to hold ``min_points`` rows or more on the flow's support; ``ValueError`` naming
        ``name`` and the fix otherwise. Every method taking points does this first."""
        x = as_points(x, self.features, name=name, min_points=min_points, dtype=self._ref.dtype).to(self._ref.device)
        return self.flow.check_support(x, name=name)

    def check_training_data(self, x, *, name: str = "train", charts: int | None = None) -> Tensor:
        """``x`` as the model's own points ``(N, D)``, once checked fit to train this model; ``ValueError``
        naming the fix otherwise.

        Refused: points off the flow's support (a sphere model's sphere), constant data, a constant
        column or no more points than columns for a full-dimensional flow, and fewer distinct points
        than ``manifold_dim + 1`` per chart (see :func:`vqflows.checks.training_points`).

        Arguments:
            x: the training points (tensor, NumPy array or nested list).
            name: what the points are called in error messages.
            charts: the chart count to check for (default: the model's ``K``).
        """
        x = self.check_points(x, name=name, min_points=max(self.K if charts is None else charts, 2))
        return training_points(x, charts=self.K if charts is None else charts, manifold_dim=self.manifold_dim,
                               name=name)

    # ------------------------------------------------------------------ charts
    def chart_distances(self, x: Tensor) -> Tensor:
        """Distances of the points ``x`` to the K chart centres, ``(N, D) -> (N, K)``: squared distances, or for
        Gaussian-mixture charts the negative log-joint of each component."""
        if self.partition is None:
            return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return torch.cat([self.partition.distances(xs) for xs in x.split(65536)]) if len(x) else \
            torch.zeros(0, self.K, dtype=x.dtype, device=x.device)

    def membership(self, x) -> Tensor:
        """Which charts contain each point of ``x``, ``(N, D) -> (N, K)`` bool."""
        with torch.no_grad():
            return membership(self.chart_distances(self.check_points(x)), self.m, self.eps)

    def assign(self, x) -> Tensor:
        """Nearest chart of each point of ``x``, ``(N, D) -> (N,)`` long."""
        with torch.no_grad():
            return nearest(self.chart_distances(self.check_points(x)))

    def top_charts(self, x, top: int) -> Tensor:
        """The ``top`` nearest charts of each point of ``x``, nearest first, ``(N, D) -> (N, top)`` long."""
        top = min(positive_int(top, name="top"), self.K)
        with torch.no_grad():
            return self.chart_distances(self.check_points(x)).topk(top, dim=-1, largest=False).indices

    def responsibilities(self, x, top: int = 4, temperature: float | None = None) -> Tensor:
        r"""Soft chart membership from the chart distances, ``(N, D) -> (N, K)``, rows summing to 1.

        ``r_ik ∝ exp(-d_k(x_i) / τ)`` over each point's ``top`` nearest charts (0 elsewhere), with ``d_k``
        the squared distance to centre ``k`` (:meth:`chart_distances`) and ``τ`` (``temperature``; by default) the median over
        ``x`` of the squared distance to the nearest centre: a point halfway between two centres is shared
        almost evenly, one at its centre stays mostly in its own chart. These are the weights that
        :func:`~vqflows.training.fit_chart_weights` takes for responsibility-weighted frames; ``top=1`` gives the hard cells.
        """
        x = self.check_points(x)
        top = min(positive_int(top, name="top"), self.K)
        with torch.no_grad():
            d = self.chart_distances(x)
            near, idx = d.topk(top, dim=-1, largest=False)
            if temperature is None:
                temperature = float(near[:, 0].median()) if len(x) else 1.0
            if not (temperature > 0 and math.isfinite(temperature)):
                temperature = 1.0  # every point on a centre: any scale gives the hard cells
            r = torch.zeros_like(d)
            r.scatter_(1, idx, torch.softmax(-(near - near[:, :1]) / temperature, dim=-1))
            return r

    @property
    def weights(self) -> Tensor:
        """Chart weights ``p_k``, ``(K,)``."""
        return self.log_weights.exp()

    # ------------------------------------------------------------- chart maps
    def _context(self, k: Tensor) -> Tensor | None:
        return self.contexts[k] if self.contexts.shape[1] else None

    def chart_map(self, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``z = f_k(x)`` and ``log|det ∂z/∂x|`` for points ``x`` in charts ``k``, the composition frame → flow:
        ``(M, D), (M,) -> (M, d), (M,)``."""
        y, ladj = self.frames(x, k)
        z, flow_ladj = self.flow(y, self._context(k))
        return z, ladj + flow_ladj

    def chart_inverse(self, z: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``x = g_k(z)`` and ``log|det ∂x/∂z|`` for latents ``z`` in charts ``k``: ``(M, d), (M,) -> (M, D), (M,)``."""
        y, ladj = self.flow.inverse(z, self._context(k))
        x, frame_ladj = self.frames.inverse(y, k)
        return x, ladj + frame_ladj

    def _row_log_prob(self, x: Tensor, k: Tensor) -> Tensor:
        """``log p(x_i | k_i)`` row by row, without the penalty: ``(M, D), (M,) -> (M,)``."""
        z, ladj = self.chart_map(x, k)
        return self.flow.base.log_prob(z) + ladj

    # ------------------------------------------------------------- densities
    def _graph(self, x: Tensor, grad: bool | None) -> bool:
        if grad is None:
            return torch.is_grad_enabled() and (self.training or x.requires_grad)
        return bool(grad) and torch.is_grad_enabled()

    def chart_log_prob(self, x, *, chunk: int = CHUNK, grad: bool | None = None) -> Tensor:
        """``log p(x | k)`` under every chart, ``(N, D) -> (N, K)``: batched passes over ``chunk`` rows of ``(N K)``.

        ``grad``: keep the autograd graph (default: when the model trains or ``x`` requires a gradient).
        """
        x = self.check_points(x)
        positive_int(chunk, name="chunk")
        with torch.set_grad_enabled(self._graph(x, grad)):
            return self._all_charts(x, chunk)

    def _all_charts(self, x: Tensor, chunk: int = CHUNK) -> Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, self.K)
        rows = max(1, chunk // self.K)
        out = []
        for xs in x.split(rows):
            n = xs.shape[0]
            k = torch.arange(self.K, device=xs.device).repeat(n)
            out.append(self._row_log_prob(xs.repeat_interleave(self.K, 0), k).view(n, self.K))
        return torch.cat(out) if out else x.new_zeros(0, self.K)

    def log_prob(self, x, *, chunk: int = CHUNK, grad: bool | None = None) -> Tensor:
        r"""Exact log-density in data coordinates, ``log Σ_{k=1}^{K} p_k p(x | k)``, ``(N, D) -> (N,)``.

        The mixture over all K charts: a normalised density, consistent with :meth:`sample`, the one
        to report. :meth:`log_prob_bound` gives cheaper lower bounds that sum only some charts.

        ``x`` may be a tensor of any floating dtype, a numpy array or a list; it is converted to the
        model's dtype and device. The autograd graph is kept only when it can be wanted — the model
        is in training mode or ``x`` requires a gradient (or ``grad=True``) — so scoring many points
        with a fitted model (``eval()`` after :func:`~vqflows.fit`) has memory bounded by ``chunk``.
        Points whose log-density is not finite in the model's dtype (e.g. ``|x| ~ 1e30``) raise
        ``ValueError``.
        """
        x = self.check_points(x)
        positive_int(chunk, name="chunk")
        with torch.set_grad_enabled(self._graph(x, grad)):
            out = torch.logsumexp(self._all_charts(x, chunk) + self.log_weights, dim=-1)
        return self._finite(x, out)

    def log_prob_bound(self, x, charts: str = "nearest", *, top: int | None = None, chunk: int = CHUNK,
                       grad: bool | None = None) -> Tensor:
        r"""A lower bound of :meth:`log_prob` that sums only some charts of each point, ``(N, D) -> (N,)``.

        ``charts="nearest"``: ``log Σ_{k ∈ top(x)} p_k p(x | k)`` over each point's ``top`` nearest
        charts (default 4), the bound that the mixture objective trains (``top/K`` of the cost; after
        mixture training it comes close to the mixture, as the results' "cheap scoring" table
        measures). ``charts="member"``: ``log Σ_{k : x ∈ U_k} p_k p(x | k)`` over the charts that
        contain ``x`` (equations 18/20), with no ``top``. Either is at most :meth:`log_prob`, and
        equal to it when every chart is summed.

        ``x``, ``chunk`` and ``grad`` are :meth:`log_prob`'s, as is the ``ValueError`` for points
        whose value is not finite.
        """
        one_of(charts, BOUND_CHARTS, name="charts")
        if charts == "member" and top is not None:
            raise ValueError(f"top: expected None with charts='member' (it sums each point's own charts), got {top!r}")
        x = self.check_points(x)
        positive_int(chunk, name="chunk")
        top = positive_int(4 if top is None else top, name="top")
        with torch.set_grad_enabled(self._graph(x, grad)):
            out = self._nearest_bound(x, chunk, top) if charts == "nearest" else self._member_bound(x, chunk)
        return self._finite(x, out)

    def _nearest_bound(self, x: Tensor, chunk: int, top: int) -> Tensor:
        m = min(top, self.K)
        parts = [torch.logsumexp(self.log_joint(xs, self.chart_distances(xs).topk(m, dim=-1, largest=False).indices)[0],
                                 dim=-1) for xs in x.split(max(1, chunk // m))] if len(x) else []
        return torch.cat(parts) if parts else x.new_zeros(0)

    def _member_bound(self, x: Tensor, chunk: int) -> Tensor:
        rows = max(1, chunk // max(self.m, 1))
        return torch.cat([torch.logsumexp(self._member_log_joint(xs), dim=-1) for xs in x.split(rows)]) \
            if len(x) else x.new_zeros(0)

    def _finite(self, x: Tensor, out: Tensor) -> Tensor:
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            worst = float(x[bad].abs().max())
            raise ValueError(f"x: expected points whose log-density is finite in {str(self._ref.dtype).removeprefix('torch.')}, "
                             f"got {int(bad.sum())} row(s) that overflow (largest |value| {worst:.3g})")
        return out

    def forward(self, x) -> Tensor:
        """``log p(x)`` (mixture), so that wrappers that call the module (DDP, ``torch.compile``) work."""
        return self.log_prob(x)

    def _member_log_joint(self, x: Tensor) -> Tensor:
        """``log p_k + log p(x|k)`` on member charts and ``-inf`` elsewhere, ``(N, K)``."""
        member = membership(self.chart_distances(x), self.m, self.eps)
        i, k = member.nonzero(as_tuple=True)
        joint = torch.full(member.shape, -math.inf, dtype=x.dtype, device=x.device)
        joint[i, k] = self._row_log_prob(x[i], k) + self.log_weights[k]
        return joint

    def log_joint(self, x: Tensor, charts: Tensor, log_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``log p_k + log p(x | k)`` and the flow's penalty at the given charts, one pass for all:
        ``(N, D), (N, m) -> (N, m), (N, m)``. ``x`` are the model's points (:meth:`check_points`);
        ``log_weights`` ``(K,)`` replaces the model's (e.g. learned ones). The penalty is the training
        loss's term beyond ``-log p`` (zero for full flows); the losses of :mod:`vqflows.training.objective`
        are built on this pass."""
        n, m = charts.shape
        lw = self.log_weights if log_weights is None else log_weights
        k = charts.reshape(-1)
        y, ladj = self.frames(x.repeat_interleave(m, 0), k)
        z, flow_ladj, penalty = self.flow.forward_and_penalty(y, self._context(k))
        log_p = self.flow.base.log_prob(z) + (ladj + flow_ladj)
        return log_p.view(n, m) + lw[charts], penalty.view(n, m)

    def reconstruction(self, x) -> Tensor:
        """Squared distance from each point of ``x`` ``(N, D)`` to its nearest chart's model manifold, ``(N,)``
        (0 for full flows)."""
        x = self.check_points(x)
        with torch.set_grad_enabled(self._graph(x, None)):
            k = nearest(self.chart_distances(x))
            y, _ = self.frames(x, k)
            return self.flow.reconstruction(y, self._context(k)) * self.frames.scale2(k)

    # ------------------------------------------------------ sampling, inference
    def _draw(self, shape: Sequence[int] | int | torch.Size, generator: torch.Generator | None,
              seed: int | None, return_charts: bool):
        shape, generator = sample_request(shape, generator, seed)
        n, ref = shape.numel(), self._ref
        # the chart draws (int64), the latents and the points, which are drawn in batches and then joined
        size = ref.element_size()
        fits_in_memory(n * (8 + size * (self.manifold_dim + 2 * self.features)), name="sample_shape",
                       what=f"{n:,} samples in R^{self.features}", value=tuple(shape) if len(shape) != 1 else n)
        k = torch.multinomial(self.weights.cpu().double(), max(n, 1), replacement=True, generator=generator)[:n].to(ref.device)
        z = self.flow.base.sample(n, dtype=ref.dtype, device=ref.device, generator=generator)
        x = torch.cat([self.chart_inverse(zs, ks)[0] for zs, ks in zip(z.split(65536), k.split(65536))]) if n \
            else ref.new_zeros(0, self.features)
        x = x.reshape(*shape, self.features)
        return (x, k.reshape(shape)) if return_charts else x

    def sample(self, sample_shape: Sequence[int] | int | torch.Size = torch.Size(), *,
               generator: torch.Generator | None = None, seed: int | None = None, return_charts: bool = False):
        """Draw ``k ~ p_k``, ``z ~ N(0, I_d)``, ``x = g_k(z)``: ``(*sample_shape, D)`` (and the charts ``sample_shape``).

        ``sample_shape`` follows torch.distributions (an int ``n`` means ``(n,)``); no gradient is kept
        (see :meth:`rsample`). Draws are batched, so any count fits in memory. ``seed`` (or a torch
        ``generator``) makes the draw reproducible; ``return_charts`` also returns each sample's chart.
        """
        with torch.no_grad():
            return self._draw(sample_shape, generator, seed, return_charts)

    def rsample(self, sample_shape: Sequence[int] | int | torch.Size = torch.Size(), *,
                generator: torch.Generator | None = None, seed: int | None = None, return_charts: bool = False):
        """Reparameterised :meth:`sample`: ``x = g_k(z)`` keeps the graph, so gradients reach the flow's
        parameters (the chart draw ``k`` is discrete and carries none). ``sample_shape``, ``generator``,
        ``seed`` and ``return_charts`` are :meth:`sample`'s."""
        return self._draw(sample_shape, generator, seed, return_charts)

    def decode(self, z, k: Tensor) -> Tensor:
        """``x = g_k(z)`` for latents ``z`` in charts ``k``: ``(N, d), (N,) -> (N, D)``."""
        z = as_points(z, self.manifold_dim, name="z", dtype=self._ref.dtype).to(self._ref.device)
        return self.chart_inverse(z, self._charts(k, z.shape[0]))[0]

    def _charts(self, k, n: int, name: str = "k") -> Tensor:
        """Chart indices ``k`` (an int for every row, or ``(n,)``) as a long tensor, each in ``[0, K)``."""
        try:
            k = torch.as_tensor(k.detach() if isinstance(k, Tensor) else np.asarray(k))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: expected chart indices in [0, {self.K}), got {type(k).__name__}") from e
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex() or k.device.type == "meta":
            raise ValueError(f"{name}: expected integer chart indices in [0, {self.K}), got dtype {k.dtype}")
        if k.dim() == 0:
            k = k.expand(n)
        if tuple(k.shape) != (n,):
            raise ValueError(f"{name}: expected one chart index or shape ({n},), got {tuple(k.shape)}")
        if n and (bool((k < 0).any()) or bool((k >= self.K).any())):
            bad = k[(k < 0) | (k >= self.K)].unique()
            raise ValueError(f"{name}: expected chart indices in [0, {self.K}), got "
                             f"{', '.join(str(int(b)) for b in bad[:5])}{' ...' if len(bad) > 5 else ''}")
        return k.long().to(self._ref.device)

    def encode(self, x, mode: str = "map", *, generator: torch.Generator | None = None,
               return_charts: bool = False, chunk: int = CHUNK):
        r"""Latent codes ``z = f_k(x)``, ``(N, D) -> (N, d)`` (and the charts used, ``(N,)``).

        The ``mode`` chooses the chart: ``"map"``: the most probable chart ``argmax_{k: x ∈ U_k} p(k | x)``;
        ``"expected"``: ``Σ_k p(k | x) f_k(x)``; ``"sample"``: ``k ~ p(k | x)`` (drawn with ``generator``).
        ``p(k | x)`` is equation 12. With hard charts all three agree. Batched over ``chunk`` points;
        ``return_charts`` also returns the charts.
        """
        one_of(mode, ENCODE_MODES, name="mode")
        x = self.check_points(x)
        with torch.set_grad_enabled(self._graph(x, None)):
            parts = [self._encode(xs, mode, generator) for xs in x.split(max(1, chunk // max(self.m, 1)))] \
                if len(x) else []
        z = torch.cat([p[0] for p in parts]) if parts else x.new_zeros(0, self.manifold_dim)
        charts = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long, device=x.device)
        return (z, charts) if return_charts else z

    def _encode(self, x: Tensor, mode: str, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        post = torch.softmax(self._member_log_joint(x), dim=-1)  # p(k | x), (N, K)
        if mode == "expected":
            i, k = (post > 0).nonzero(as_tuple=True)
            zk = self.chart_map(x[i], k)[0]
            z = torch.zeros(x.shape[0], zk.shape[-1], dtype=zk.dtype, device=zk.device)
            z.index_add_(0, i, zk * post[i, k, None])
            return z, post.argmax(-1)
        if mode == "map":
            charts = post.argmax(-1)
        else:
            charts = torch.multinomial(post.double().cpu(), 1, generator=generator).flatten().to(x.device)
        return self.chart_map(x, charts)[0], charts

    def distribution(self) -> VQFlowDistribution:
        """This model as a :class:`torch.distributions.Distribution` with ``event_shape (D,)``."""
        return VQFlowDistribution(self)

    # ----------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` (the recipe: preset and arguments) and ``weights.pt`` (a ``state_dict``)
        into the folder ``path``, each atomically."""
        return persistence.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> VQFlow:
        """Rebuild a model saved by :meth:`save` (also accepts a run folder holding ``model/``)."""
        return persistence.load(path, map_location=map_location)

    def extra_repr(self) -> str:
        return f"charts={self.K}, m={self.m}, eps={self.eps}, local_frames={self.local_frames}"
