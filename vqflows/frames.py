"""Chart frames: a fixed affine map per chart, ``y = A_k (x - μ_k)``, fitted to the chart's points.

The frame is the first layer of each chart map g_k, so it is part of the exact density:
``log p(x | k) = log p_flow(A_k (x - μ_k) | v_k) + log|det A_k|``. It puts every chart's points in
a standard position (centred, principal axes first, unit spread) so that one conditional flow serves
all charts. For full-dimensional flows ``A_k = Λ_k^{-1/2} U_kᵀ`` (PCA whitening, ``log|det A_k| =
-½ Σ log λ_i``). For embedding flows, whose density lives on a d-volume, only a similarity is
allowed: ``A_k = U_kᵀ / s_k`` with one scale ``s_k``, contributing ``-d log s_k``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChartFrames(nn.Module):
    """K affine frames ``y = A_k (x - μ_k)`` with log-determinants; identity until :meth:`fit`.

    Buffers: ``shift`` (K, D), ``matrix`` (K, D, D), ``inverse_matrix`` (K, D, D), ``logdet`` (K,).
    """

    def __init__(self, charts: int, features: int) -> None:
        super().__init__()
        eye = torch.eye(features).expand(charts, features, features).clone()
        self.register_buffer("shift", torch.zeros(charts, features))
        self.register_buffer("matrix", eye)
        self.register_buffer("inverse_matrix", eye.clone())
        self.register_buffer("logdet", torch.zeros(charts))

    @torch.no_grad()
    def fit(self, x: Tensor, member: Tensor, *, similarity_dim: int | None = None,
            prior_count: float = 4.0, floor: float = 1e-6, trim: float | None = 16.0) -> None:
        """Fit each chart's frame to its members.

        Arguments:
            x: points ``(N, D)``.
            member: chart membership ``(N, K)`` bool.
            similarity_dim: ``None`` for whitening; ``d`` for a similarity frame whose scale is the
                root mean of the top-``d`` principal variances (density on a d-volume).
            prior_count: pseudo-points of the global covariance (scaled by the chart's share) mixed
                into each chart's covariance, so that charts with few points keep a sane frame.
            floor: smallest principal variance, relative to the largest global one.
            trim: a chart's frame is refitted without the members whose squared Mahalanobis distance
                exceeds ``trim`` (the chi-square 0.999 quantile for D = 3 is 16.3): a few stray points
                of a chart whose cell also catches a distant piece of the manifold would otherwise
                inflate its frame. ``None`` keeps every member. The frame stays exact either way.
        """
        self._fit(x.double(), member, similarity_dim, prior_count, floor)
        if trim is not None:
            y = torch.einsum("kij,nkj->nki", self.matrix.double(), x.double()[:, None, :] - self.shift.double())
            if similarity_dim is None:
                far = y.square().sum(-1) > trim
            else:  # similarity frames are not whitened: measure in the whitened chart covariance
                far = torch.zeros_like(member)
                for k in range(member.shape[1]):
                    rows = member[:, k]
                    if rows.sum() > x.shape[1]:
                        yk = y[rows, k]
                        cov = torch.cov(yk.T) + 1e-9 * torch.eye(yk.shape[1], dtype=yk.dtype)
                        far[rows, k] = (yk @ torch.linalg.inv(cov) * yk).sum(-1) > trim
            keep = member & ~far
            self._fit(x.double(), keep, similarity_dim, prior_count, floor)

    def _fit(self, x: Tensor, member: Tensor, similarity_dim: int | None, prior_count: float,
             floor: float) -> None:
        n, dim = x.shape
        glob_mean = x.mean(0)
        glob_cov = torch.cov(x.T).reshape(dim, dim)
        w = member.double()
        counts = w.sum(0)  # (K,)
        share = (counts / n).clamp_min(1.0 / n)
        mean = (w.T @ x + prior_count * glob_mean) / (counts + prior_count)[:, None]
        xc = x[:, None, :] - mean[None]  # (N, K, D)
        scatter = torch.einsum("nk,nki,nkj->kij", w, xc, xc)
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
        dt = self.shift.dtype
        self.shift.copy_(mean.to(dt))
        self.matrix.copy_(matrix.to(dt))
        self.inverse_matrix.copy_(inverse.to(dt))
        self.logdet.copy_(logdet.to(dt))

    @torch.no_grad()
    def fit_rotations(self, x: Tensor, member: Tensor) -> None:
        """Rotation-only frames for data on the unit sphere: ``A_k = R_kᵀ`` turns the chart's mean
        direction onto ``e_3`` (``μ_k = 0``, ``log|det A_k| = 0``), so a density on the fixed sphere
        keeps its meaning and its projection point sits opposite the chart."""
        from .flows.sphere import rotation_to

        x = x.double()
        w = member.double()
        glob = x.mean(0)
        for k in range(member.shape[1]):
            m = w[:, k] @ x if w[:, k].sum() > 0 else glob
            if float(m.norm()) < 1e-9:
                m = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
            r = rotation_to(m)
            self.shift[k].zero_()
            self.matrix[k].copy_(r.T.to(self.matrix.dtype))
            self.inverse_matrix[k].copy_(r.to(self.matrix.dtype))
            self.logdet[k] = 0.0

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        """``y = A_k (x - μ_k)`` row by row: ``(M, D), (M,) -> (M, D)``."""
        return torch.einsum("mij,mj->mi", self.matrix[k], x - self.shift[k])

    def inverse(self, y: Tensor, k: Tensor) -> Tensor:
        """``x = μ_k + A_k^{-1} y`` row by row: ``(M, D), (M,) -> (M, D)``."""
        return torch.einsum("mij,mj->mi", self.inverse_matrix[k], y) + self.shift[k]

    def scale2(self, k: Tensor) -> Tensor:
        """Squared length scale ``1/|A_k|²`` of similarity frames, ``(M,)`` (distances in y → in x)."""
        return self.inverse_matrix[k][:, :, 0].square().sum(-1)
