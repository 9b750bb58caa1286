"""Chart frames: a fixed affine map per chart, ``y = A_k (x - μ_k)``, fitted to the chart's points.

The frame is the first map of each chart map g_k, so it is part of the exact density: it returns
``(y, log|det A_k|)`` like every other map and the chart map is the composition of the frame and the
flow. It puts every chart's points in a standard position (centred, principal axes first, unit
spread) so that one conditional flow serves all charts. Three kinds, chosen by the flow
(:attr:`vqflows.flows.ChartFlow.frame`):

* ``"whitening"`` (full-dimensional flows): ``A_k = Λ_k^{-1/2} U_kᵀ`` (PCA whitening),
  ``log|det A_k| = -½ Σ log λ_i``;
* ``"similarity"`` (embedding flows, whose density lives on a d-volume): ``A_k = U_kᵀ / s_k`` with
  one scale ``s_k``, contributing ``-d log s_k``;
* ``"rotation"`` (a flow on a fixed sphere): ``A_k`` turns the chart's mean direction onto the
  flow's axis, ``μ_k = 0``, ``log|det A_k| = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flows.base import FRAME_KINDS
from .geometry import rotation_to

#: Members of a chart whose squared Mahalanobis distance exceeds the χ²_D quantile at this level are
#: left out of the refit of its frame (and, with overlapping charts, out of its training points). It is
#: the level of the cut-off 16 (in D = 3) that the defaults were measured with, ``P(χ²_3 ≤ 16)``, so
#: that the cut-off grows with D: a whitened point has ``||y||² ≈ D`` on average.
TRIM_LEVEL = 0.9988660157102147

# Frames gather one (D, D) matrix per row up to this D; above it, rows are grouped by chart and
# each A_k applied once (memory O(M D + K D²) instead of O(M D²)).
_GATHER_MAX_FEATURES = 16
# Charts fitted together keep their (N, charts, D) working arrays near this many values.
_CHUNK_VALUES = 1 << 25


def trim_threshold(features: int, level: float | None = TRIM_LEVEL) -> float | None:
    """The squared-distance cut-off ``χ²_D`` quantile at ``level`` (``None`` keeps every point)."""
    if level is None:
        return None
    from scipy.stats import chi2  # deferred: scipy.stats costs a second at import, and only this needs it

    return float(chi2.ppf(level, features))


class ChartFrames(nn.Module):
    """K affine frames ``y = A_k (x - μ_k)`` with log-determinants; identity until :meth:`fit`.

    Buffers: ``shift`` (K, D), ``matrix`` (K, D, D), ``inverse_matrix`` (K, D, D), ``logdet`` (K,).

    Example:
        >>> frames = ChartFrames(charts=3, features=2)
        >>> x, k = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1])
        >>> y, logdet = frames(x, k)
        >>> bool(torch.allclose(frames.inverse(y, k)[0], x)), logdet.shape
        (True, torch.Size([5]))
    """

    def __init__(self, charts: int, features: int) -> None:
        super().__init__()
        eye = torch.eye(features).expand(charts, features, features).clone()
        self.register_buffer("shift", torch.zeros(charts, features))
        self.register_buffer("matrix", eye)
        self.register_buffer("inverse_matrix", eye.clone())
        self.register_buffer("logdet", torch.zeros(charts))

    @property
    def charts(self) -> int:
        return self.shift.shape[0]

    @property
    def features(self) -> int:
        return self.shift.shape[1]

    @torch.no_grad()
    def set_gaussian(self, means: Tensor, chol: Tensor) -> None:
        """Whitening frames of Gaussian components: ``y = L_k^{-1} (x - μ_k)`` with ``Σ_k = L_k L_kᵀ``
        (``means`` ``(K, D)``, lower Cholesky factors ``chol`` ``(K, D, D)``), ``log|det A_k| = -Σ_i log L_k,ii``.
        A chart whose flow is the identity is then the component ``N(μ_k, Σ_k)``."""
        chol = chol.double()
        eye = torch.eye(self.features, dtype=chol.dtype, device=chol.device).expand_as(chol)
        inverse = torch.linalg.solve_triangular(chol, eye, upper=False)
        self.shift.copy_(means.to(self.shift))
        self.matrix.copy_(inverse.to(self.matrix))
        self.inverse_matrix.copy_(chol.to(self.matrix))
        self.logdet.copy_((-chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)).to(self.logdet))

    # ------------------------------------------------------------------ maps
    def forward(self, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(A_k (x - μ_k), log|det A_k|)`` row by row: ``(M, D), (M,) -> (M, D), (M,)``."""
        return self._per_chart(self.matrix, x - self.shift[k], k), self.logdet[k]

    def inverse(self, y: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ_k + A_k^{-1} y, -log|det A_k|)`` row by row: ``(M, D), (M,) -> (M, D), (M,)``."""
        return self._per_chart(self.inverse_matrix, y, k) + self.shift[k], -self.logdet[k]

    def _per_chart(self, matrices: Tensor, v: Tensor, k: Tensor) -> Tensor:
        """``out_i = M_{k_i} v_i``: ``(K, D, D), (M, D), (M,) -> (M, D)``."""
        if self.features <= _GATHER_MAX_FEATURES:
            return torch.einsum("mij,mj->mi", matrices[k], v)
        K = matrices.shape[0]
        if K == 1:
            return v @ matrices[0].T
        order = torch.argsort(k)
        counts = torch.bincount(k, minlength=K).tolist()
        blocks = v[order].split(counts)
        out = torch.cat([b @ matrices[j].T for j, b in enumerate(blocks)])
        return out[torch.argsort(order)]

    def scale2(self, k: Tensor) -> Tensor:
        """Squared length scale ``1/|A_k|²`` of similarity frames, ``(M,)`` (distances in y → in x)."""
        return self.inverse_matrix[:, :, 0].square().sum(-1)[k]

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, x: Tensor, member: Tensor, *, kind: str = "whitening", dim: int | None = None,
            axis: Tensor | None = None, prior_count: float = 4.0, floor: float = 1e-6,
            trim: float | None = TRIM_LEVEL) -> None:
        """Fit each chart's frame to its members.

        Arguments:
            x: points ``(N, D)``, on any device.
            member: chart membership ``(N, K)`` bool (or weights ``(N, K)`` in ``[0, 1]``:
                responsibility-weighted frames).
            kind: ``"whitening"``, ``"similarity"`` or ``"rotation"`` (see the module).
            dim: ``d`` for similarity frames, whose scale is the root mean of the top-``d``
                principal variances.
            axis: for rotation frames, the direction ``(D,)`` each chart's mean direction is turned onto.
            prior_count: pseudo-points of the global covariance (scaled by the chart's share) mixed
                into each chart's covariance, so that charts with few points keep a sane frame.
            floor: smallest principal variance, relative to the largest global one.
            trim: a chart's frame is refitted without the members beyond the χ²_D quantile at this
                level (:data:`TRIM_LEVEL`): a few stray points of a chart whose cell also catches a
                distant piece of the manifold would otherwise inflate its frame. ``None`` keeps
                every member. The density stays exact either way.
        """
        if kind not in FRAME_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(map(repr, FRAME_KINDS))}, got {kind!r}")
        n, features = x.shape
        if member.shape != (n, self.charts):
            raise ValueError(f"member: expected shape ({n}, {self.charts}), got {tuple(member.shape)}")
        if kind == "rotation":
            self._fit_rotations(x, member, axis)
            return
        similarity = dim if kind == "similarity" else None
        if bool((member == member[:, :1]).all()):  # one frame serves every chart: fit it once
            parts = self._fit_columns(x, member[:, :1], similarity, prior_count, floor, trim)
            for name, value in zip(("shift", "matrix", "inverse_matrix", "logdet"), parts):
                getattr(self, name).copy_(value.expand_as(getattr(self, name)))
            return
        if member.dtype == torch.bool and n * self.charts * features > _CHUNK_VALUES:
            # many points: sums over the (point, chart) member pairs, O(N D²) memory, not O(N K D)
            parts = self._fit_pairs(x, member, similarity, prior_count, floor, trim)
            for name, value in zip(("shift", "matrix", "inverse_matrix", "logdet"), parts):
                getattr(self, name).copy_(value)
            return
        # a chart's frame depends only on x and its own column: fit as many columns at once as keep
        # the (N, chunk, D) working arrays near 2^25 values
        chunk = max(1, _CHUNK_VALUES // max(1, n * features))
        for start in range(0, self.charts, chunk):
            parts = self._fit_columns(x, member[:, start:start + chunk], similarity, prior_count, floor, trim)
            for name, value in zip(("shift", "matrix", "inverse_matrix", "logdet"), parts):
                getattr(self, name)[start:start + chunk].copy_(value)

    def _fit_columns(self, x: Tensor, member: Tensor, similarity_dim: int | None, prior_count: float,
                     floor: float, trim: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = x.double()
        frame = _moments(x, member, similarity_dim, prior_count, floor)
        cutoff = trim_threshold(x.shape[1], trim)
        if cutoff is not None:
            shift, matrix = frame[0], frame[1]
            y = torch.einsum("kij,nkj->nki", matrix, x[:, None, :] - shift)
            if similarity_dim is None:
                far = y.square().sum(-1) > cutoff
            else:  # similarity frames are not whitened: measure in the whitened chart covariance
                far = torch.zeros(member.shape, dtype=torch.bool, device=x.device)
                for k in range(member.shape[1]):
                    rows = member[:, k] > 0
                    if rows.sum() > x.shape[1]:
                        yk = y[rows, k]
                        cov = torch.cov(yk.T) + 1e-9 * torch.eye(yk.shape[1], dtype=yk.dtype, device=yk.device)
                        far[rows, k] = (yk @ torch.linalg.inv(cov) * yk).sum(-1) > cutoff
            keep = member.masked_fill(far, 0) if member.dtype != torch.bool else member & ~far
            frame = _moments(x, keep, similarity_dim, prior_count, floor)
        dt = self.shift.dtype
        return tuple(t.to(dt) for t in frame)  # type: ignore[return-value]

    def _fit_pairs(self, x: Tensor, member: Tensor, similarity_dim: int | None, prior_count: float,
                   floor: float, trim: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`_fit_columns` for hard membership, from the member pairs alone (the same moments)."""
        x = x.double()
        i, k = member.nonzero(as_tuple=True)
        frame = _pair_moments(x, i, k, self.charts, similarity_dim, prior_count, floor)
        cutoff = trim_threshold(x.shape[1], trim)
        if cutoff is not None:
            shift, matrix = frame[0], frame[1]
            y = torch.einsum("pij,pj->pi", matrix[k], x[i] - shift[k])
            if similarity_dim is None:
                far = y.square().sum(-1) > cutoff
            else:  # similarity frames are not whitened: measure in the whitened chart covariance
                far = torch.zeros(len(i), dtype=torch.bool, device=x.device)
                for c in range(self.charts):
                    rows = (k == c).nonzero().flatten()
                    if len(rows) > x.shape[1]:
                        yc = y[rows]
                        cov = torch.cov(yc.T) + 1e-9 * torch.eye(yc.shape[1], dtype=yc.dtype, device=yc.device)
                        far[rows] = (yc @ torch.linalg.inv(cov) * yc).sum(-1) > cutoff
            keep = ~far
            frame = _pair_moments(x, i[keep], k[keep], self.charts, similarity_dim, prior_count, floor)
        return tuple(t.to(self.shift.dtype) for t in frame)  # type: ignore[return-value]

    def _fit_rotations(self, x: Tensor, member: Tensor, axis: Tensor | None) -> None:
        x = x.double()
        w = member.double()
        target = rotation_to(x.new_tensor([0.0, 0.0, 1.0]) if axis is None else axis.to(x))  # R_a e_3 = axis
        glob = x.mean(0)
        for k in range(self.charts):
            m = w[:, k] @ x if w[:, k].sum() > 0 else glob
            if float(m.norm()) < 1e-9:
                m = x.new_tensor([0.0, 0.0, 1.0])
            # A_k = R_a R_kᵀ turns the chart's mean direction onto the axis (R_k e_3 = m_k / |m_k|)
            r = rotation_to(m)
            a = r.T if axis is None else target @ r.T
            self.shift[k].zero_()
            self.matrix[k].copy_(a.to(self.matrix))
            self.inverse_matrix[k].copy_(a.T.to(self.matrix))
            self.logdet[k] = 0.0


def _moments(x: Tensor, member: Tensor, similarity_dim: int | None, prior_count: float,
             floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(shift (K, D), matrix (K, D, D), inverse (K, D, D), logdet (K,))`` of the weighted chart moments, float64."""
    n, dim = x.shape
    w = member.double()
    counts = w.sum(0)  # (K,)
    mean = (w.T @ x + prior_count * x.mean(0)) / (counts + prior_count)[:, None]
    xc = x[:, None, :] - mean[None]  # (N, K, D)
    scatter = torch.einsum("nk,nki,nkj->kij", w, xc, xc)
    return _frames_from(x, counts, mean, scatter, similarity_dim, prior_count, floor)


def _pair_moments(x: Tensor, i: Tensor, k: Tensor, charts: int, similarity_dim: int | None, prior_count: float,
                  floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_moments` of hard membership given as member pairs ``(i, k)``: sums over the pairs only."""
    dim = x.shape[1]
    counts = torch.bincount(k, minlength=charts).to(x.dtype)
    sums = torch.zeros(charts, dim, dtype=x.dtype, device=x.device).index_add_(0, k, x[i])
    mean = (sums + prior_count * x.mean(0)) / (counts + prior_count)[:, None]
    xc = x[i] - mean[k]
    scatter = torch.zeros(charts, dim, dim, dtype=x.dtype, device=x.device).index_add_(
        0, k, xc[:, :, None] * xc[:, None, :])
    return _frames_from(x, counts, mean, scatter, similarity_dim, prior_count, floor)


def _frames_from(x: Tensor, counts: Tensor, mean: Tensor, scatter: Tensor, similarity_dim: int | None,
                 prior_count: float, floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, dim = x.shape
    glob_cov = torch.cov(x.T).reshape(dim, dim)
    share = (counts / n).clamp_min(1.0 / n)
    # the prior covariance shrinks with the chart: a chart holding a share s of the data
    # spans roughly s of its length along the manifold
    prior = glob_cov[None] * share[:, None, None].square()
    cov = (scatter + prior_count * prior) / (counts + prior_count)[:, None, None]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    evals = evals.clamp_min(floor * float(torch.linalg.eigvalsh(glob_cov).max()))
    if similarity_dim is None:
        scale = evals.sqrt()  # (K, D)
    else:
        s = evals[:, :similarity_dim].mean(-1).sqrt()
        scale = s[:, None].expand_as(evals)
    matrix = evecs.transpose(-1, -2) / scale[:, :, None]
    inverse = evecs * scale[:, None, :]
    logdet = -(scale.log()[:, :similarity_dim].sum(-1) if similarity_dim else scale.log().sum(-1))
    return mean, matrix, inverse, logdet


__all__ = ["ChartFrames", "TRIM_LEVEL", "trim_threshold"]
