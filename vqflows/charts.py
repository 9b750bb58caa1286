"""Charts: partitions of the data manifold into K overlapping regions U_1..U_K (paper §4.2.1–4.2.2).

A partitioner gives, for each point, distances to the K chart centres, ``(N, D) -> (N, K)`` (smallest
nearest), and the centres themselves as context vectors ``v_k`` ``(K, C)``. Three partitioners:

* :class:`VQAutoencoder` — encoder E, decoder D and codebook ``v_1..v_K`` in a ``C``-dimensional
  latent space; ``d_k(x) = ||E(x) - v_k||²``.
* :class:`KMeansCharts` — k-means in (standardised) data space; ``d_k(x) = ||x - μ_k||²``, ``C = D``.
* :class:`GaussianMixtureCharts` — a fitted Gaussian mixture; ``d_k(x) = -log(w_k N(x; μ_k, Σ_k))``, and
  the model takes the mixture's weights and whitening frames, so that it starts as that mixture.

Membership (:func:`membership`) keeps the m nearest centres, enlarged by ε; chart weights
(:func:`chart_weights`) follow equation 15.

Fitting costs do not grow with N beyond a few passes: the VQ-AE takes a fixed budget of Adam steps
(an epoch is at most ``points_per_epoch`` points), codebook placement (k-means, restarts of unused
codes during training) runs on a seeded subsample of at most ``sample_points`` points, and whole-set
passes (distances, the final restart) go through the encoder ``chunk`` rows at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .baselines import fit_gmm

#: Points per VQ-AE epoch. 5,000 is the training split of the paper's sets, so there the schedule is a
#: plain epoch over the data; on larger sets the step budget stays ``epochs × ceil(5000 / batch_size)``.
POINTS_PER_EPOCH = 5_000
#: Largest subsample on which codebooks are placed (k-means, restarts during training). 20,000 points
#: leave 600 per code at K = 32, and every paper set (N ≤ 20,000) is fitted on all its points.
SAMPLE_POINTS = 20_000
#: Rows per encoder / distance pass over a whole set: keeps activations and ``(rows, K)`` blocks small.
CHUNK = 65_536


def mlp(inputs: int, outputs: int, hidden: Sequence[int]) -> nn.Sequential:
    """A feed-forward network with SiLU activations."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.SiLU()]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


def membership(d2: Tensor, m: int = 1, eps: float = 0.0) -> Tensor:
    r"""Chart membership ``x ∈ U_k  ⇔  d_k(x) ≤ (1 + ε)·d̃_m(x)``, ``(N, K) -> (N, K)`` bool.

    ``d̃_m`` is the m-th smallest distance, so each point has at least ``m`` charts; ``m = 1, ε = 0``
    is the hard boundary (ties aside, exactly one chart).
    """
    dm = d2.kthvalue(m, dim=-1, keepdim=True).values
    return d2 <= dm * (1.0 + eps)


def nearest(d2: Tensor) -> Tensor:
    """Index of the nearest centre, ``(N, K) -> (N,)``."""
    return d2.argmin(dim=-1)


def chart_weights(member: Tensor) -> Tensor:
    r"""Equation 15: ``r_k = E[1_{U_k}(x)]`` over the data, ``p_k = r_k / Σ_j r_j``; ``(N, K) -> (K,)``."""
    # counting the booleans avoids an (N, K) float64 copy; integer counts make the same mean exactly
    total = member.sum(dim=0) if member.dtype == torch.bool else member.to(torch.float64).sum(dim=0)
    r = total.to(torch.float64) / member.shape[0]
    return r / r.sum()


def _subsample(n: int, size: int, seed: int) -> Tensor | None:
    """A seeded subset of ``size`` of ``range(n)``, or ``None`` when ``n <= size`` (use everything)."""
    if n <= size:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


class _EpochIndices:
    """Row indices of successive epochs of at most ``points`` rows each, ``(≤ points,)``.

    With ``n <= points`` every epoch is a fresh permutation of all rows; otherwise epochs walk one
    permutation of all ``n`` rows (drawn anew when used up), so every row is seen once before any twice.
    """

    def __init__(self, n: int, points: int, gen: torch.Generator) -> None:
        self.n, self.points, self.gen = n, points, gen
        self.perm, self.pos = torch.empty(0, dtype=torch.long), 0

    def next(self) -> Tensor:
        if self.n <= self.points:
            return torch.randperm(self.n, generator=self.gen)
        parts, need = [], self.points
        while need:
            if self.pos == len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(parts)


_MULTINOMIAL_CATEGORIES = 2**24  # torch.multinomial refuses more categories


def _draw_index(p: Tensor, gen: torch.Generator) -> int:
    """One index drawn with probability ``p`` ``(N,)`` (float64, summing to 1, on the CPU)."""
    if p.shape[0] <= _MULTINOMIAL_CATEGORIES:
        return int(torch.multinomial(p, 1, generator=gen)[0])
    u = torch.rand(1, generator=gen, dtype=torch.float64)
    return min(int(torch.searchsorted(p.cumsum(0), u)[0]), p.shape[0] - 1)


class _Standardise(nn.Module):
    """Fixed per-feature standardisation used in front of a partitioner."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def fit(self, x: Tensor) -> None:
        self.shift.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-8))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class VQLoss(NamedTuple):
    """Loss breakdown of one VQ-AE step (all scalars)."""

    total: Tensor
    reconstruction: Tensor
    codebook: Tensor
    commitment: Tensor


class VQAutoencoder(nn.Module):
    r"""Vector-quantised autoencoder whose codes are the encoded chart centres.

    Loss (van den Oord et al., 2017): ``||x - D(v_{k(x)})||² + ||sg[E(x)] - v_k||² + β ||E(x) - sg[v_k]||²``,
    with a straight-through gradient from the decoder to the encoder. The codebook is initialised
    by k-means on the encodings after a short warm-up, and unused codes are restarted on the
    encodings far from every code so that all K codes are used.

    Arguments:
        features: ``D``.
        codes: ``K``.
        latent: ``C``, the latent (code) dimension.
        hidden: widths of the encoder (reversed for the decoder).
        beta: commitment weight.
        encoder, decoder: optional custom networks ``(N, D) -> (N, C)`` and ``(N, C) -> (N, D)``.
    """

    #: Points per training epoch (``None``: every epoch is a full pass, so the step budget grows with N).
    points_per_epoch: int | None = POINTS_PER_EPOCH

    def __init__(self, features: int, codes: int = 32, latent: int = 2, *,
                 hidden: Sequence[int] = (64, 64), beta: float = 0.25,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.features, self.codes, self.latent, self.beta = features, codes, latent, beta
        self.standardise = _Standardise(features)
        self.encoder = encoder if encoder is not None else mlp(features, latent, hidden)
        self.decoder = decoder if decoder is not None else mlp(latent, features, tuple(reversed(hidden)))
        self.codebook = nn.Parameter(torch.randn(codes, latent) * 0.1)

    @property
    def centres(self) -> Tensor:
        """The encoded chart centres ``v_k``, ``(K, C)``."""
        return self.codebook

    def encode(self, x: Tensor) -> Tensor:
        """``E(x)``: ``(N, D) -> (N, C)``."""
        return self.encoder(self.standardise(x))

    def distances(self, x: Tensor, *, chunk: int = CHUNK) -> Tensor:
        """``d_k(x) = ||E(x) - v_k||²``: ``(N, D) -> (N, K)``, through the encoder ``chunk`` rows at a time."""
        return torch.cat([torch.cdist(self.encode(xc), self.codebook).square() for xc in x.split(chunk)])

    def loss(self, x: Tensor) -> VQLoss:
        e = self.encode(x)
        k = torch.cdist(e, self.codebook).argmin(-1)
        q = self.codebook[k]
        q_st = e + (q - e).detach()
        rec = (self.decoder(q_st) - self.standardise(x)).square().sum(-1).mean()
        cb = (q - e.detach()).square().sum(-1).mean()
        com = (e - q.detach()).square().sum(-1).mean()
        return VQLoss(rec + cb + self.beta * com, rec, cb, com)

    def fit(self, x: Tensor, *, epochs: int = 30, warmup: int = 5, batch_size: int = 256, lr: float = 2e-3,
            seed: int = 0, points_per_epoch: int | None = None, sample_points: int = SAMPLE_POINTS,
            progress=None) -> list[float]:
        """Train on ``x`` ``(N, D)``; returns the per-epoch mean loss.

        An epoch is at most ``points_per_epoch`` points (default: the class attribute), so training
        takes ``epochs × ceil(min(N, points_per_epoch) / batch_size)`` Adam steps (600 by default for
        N ≥ 5,000) whatever N. The first ``warmup`` epochs train a plain autoencoder; the codebook is
        then placed by k-means, and unused codes restarted after every epoch, on a seeded subsample of
        at most ``sample_points`` points; a last restart after training looks at all N points.
        """
        gen = torch.Generator().manual_seed(seed)
        self.standardise.fit(x)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        pick = _subsample(x.shape[0], sample_points, seed)
        sub = x if pick is None else x[pick.to(x.device)]
        points = self.points_per_epoch if points_per_epoch is None else points_per_epoch
        epochs_idx = _EpochIndices(x.shape[0], x.shape[0] if points is None else points, gen)
        losses = []
        for epoch in range(epochs):
            if epoch == warmup:
                self._init_codebook(sub, seed)
            idx = epochs_idx.next().to(x.device)
            total = 0.0
            for batch in idx.split(batch_size):
                xb = x[batch]
                if epoch < warmup:  # plain autoencoder until the codebook is placed
                    loss = (self.decoder(self.encode(xb)) - self.standardise(xb)).square().sum(-1).mean()
                else:
                    loss = self.loss(xb).total
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * xb.shape[0]
            if epoch >= warmup:
                self._restart_dead_codes(sub, gen)
            losses.append(total / idx.shape[0])
            if progress is not None:
                progress(epoch, losses[-1])
        if epochs <= warmup:
            self._init_codebook(sub, seed)
        self._restart_dead_codes(x, gen)
        return losses

    @torch.no_grad()
    def _encode_chunked(self, x: Tensor, chunk: int = CHUNK) -> Tensor:
        """``E(x)`` without a graph, ``chunk`` rows at a time: ``(N, D) -> (N, C)``."""
        return torch.cat([self.encode(xc) for xc in x.split(chunk)])

    @torch.no_grad()
    def _init_codebook(self, x: Tensor, seed: int) -> None:
        from sklearn.cluster import KMeans  # deferred: scikit-learn is slow to import

        e = self._encode_chunked(x).cpu().double().numpy()
        km = KMeans(self.codes, n_init=1, random_state=seed).fit(e)
        self.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.codebook.dtype))

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, gen: torch.Generator, chunk: int = CHUNK) -> None:
        """Move codes that no point uses onto encodings far from every code (probability ∝ distance²)."""
        e = self._encode_chunked(x, chunk)
        for _ in range(self.codes):
            counts = torch.zeros(self.codes, dtype=torch.long, device=e.device)
            dmin = []
            for ec in e.split(chunk):
                d2 = torch.cdist(ec, self.codebook).square()
                counts += torch.bincount(d2.argmin(-1), minlength=self.codes)
                dmin.append(d2.min(-1).values)
            dead = (counts == 0).nonzero().flatten()
            if len(dead) == 0:
                return
            dmin = torch.cat(dmin).double()
            if float(dmin.sum()) <= 0:
                return  # fewer distinct encodings than codes
            self.codebook[dead[0]] = e[_draw_index((dmin / dmin.sum()).cpu(), gen)]


class KMeansCharts(nn.Module):
    """k-means in standardised data space; the centres (``C = D``) are the chart contexts."""

    def __init__(self, features: int, codes: int = 32) -> None:
        super().__init__()
        self.features, self.codes, self.latent = features, codes, features
        self.standardise = _Standardise(features)
        self.register_buffer("codebook", torch.zeros(codes, features))

    @property
    def centres(self) -> Tensor:
        return self.codebook

    def encode(self, x: Tensor) -> Tensor:
        return self.standardise(x)

    def distances(self, x: Tensor, *, chunk: int = CHUNK) -> Tensor:
        """``d_k(x) = ||z(x) - μ_k||²`` in standardised coordinates: ``(N, D) -> (N, K)``."""
        return torch.cat([torch.cdist(self.encode(xc), self.codebook).square() for xc in x.split(chunk)])

    @torch.no_grad()
    def fit(self, x: Tensor, *, seed: int = 0, sample_points: int = SAMPLE_POINTS, **unused) -> list[float]:
        """k-means (3 restarts) on ``x`` ``(N, D)``, or on a seeded subsample of ``sample_points`` when N is
        larger; returns ``[mean squared distance to the nearest centre over all N]``."""
        from sklearn.cluster import KMeans  # deferred: scikit-learn is slow to import

        self.standardise.fit(x)
        pick = _subsample(x.shape[0], sample_points, seed)
        z = self.encode(x if pick is None else x[pick.to(x.device)])
        km = KMeans(self.codes, n_init=3, random_state=seed).fit(z.cpu().double().numpy())
        self.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.codebook.dtype))
        if pick is None:
            return [float(km.inertia_) / x.shape[0]]
        inertia = sum(float(self.distances(xc).min(-1).values.double().sum()) for xc in x.split(CHUNK))
        return [inertia / x.shape[0]]


class GaussianMixtureCharts(nn.Module):
    r"""Charts from a fitted full-covariance Gaussian mixture: chart ``k`` is component ``k``.

    ``d_k(x) = -log(w_k N(x; μ_k, Σ_k))``, the negative log-joint, so a point's nearest charts are its
    most responsible components; the centres (the chart contexts, ``C = D``) are the means. The model
    takes the mixture's weights as chart weights and whitening frames ``y = L_k^{-1}(x - μ_k)`` from
    ``Σ_k = L_k L_kᵀ`` (:func:`~vqflows.training.fit_chart_weights`), so with an identity flow the VQ-Flow *is* the
    mixture: its ``log_prob`` is ``GaussianMixture.score_samples``. Fitted by scikit-learn
    (:data:`vqflows.baselines.GMM_OPTIONS`, ``random_state=seed``) on at most ``sample_points`` points.

    Buffers: ``codebook`` (the means, ``(K, D)``), ``chol`` ``(K, D, D)``, ``log_weights`` ``(K,)``.
    """

    #: the model takes its chart weights and frames from this partition (see :func:`~vqflows.training.fit_chart_weights`)
    mixture = True

    def __init__(self, features: int, codes: int = 32) -> None:
        super().__init__()
        self.features, self.codes, self.latent = features, codes, features
        self.register_buffer("codebook", torch.zeros(codes, features))
        self.register_buffer("chol", torch.eye(features).expand(codes, features, features).clone())
        self.register_buffer("log_weights", torch.full((codes,), -float(torch.tensor(codes).log())))

    @property
    def centres(self) -> Tensor:
        return self.codebook

    @torch.no_grad()
    def set_mixture(self, weights, means, covariances) -> None:
        """Take the parameters of a fitted mixture, ``(K,), (K, D), (K, D, D)`` (e.g. a ``GaussianMixture``'s
        ``weights_``, ``means_`` and ``covariances_``)."""
        w = torch.as_tensor(weights, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if w.shape != (self.codes,) or cov.shape != (self.codes, self.features, self.features):
            raise ValueError(f"mixture: expected {self.codes} components on {self.features} features, "
                             f"got weights {tuple(w.shape)} and covariances {tuple(cov.shape)}")
        self.codebook.copy_(torch.as_tensor(means, dtype=torch.float64).to(self.codebook))
        self.chol.copy_(torch.linalg.cholesky(cov).to(self.chol))
        self.log_weights.copy_((w / w.sum()).log().to(self.log_weights))

    def distances(self, x: Tensor, *, chunk: int = CHUNK) -> Tensor:
        """``-log(w_k N(x; μ_k, Σ_k))``: ``(N, D) -> (N, K)``."""
        eye = torch.eye(self.features, dtype=self.chol.dtype, device=self.chol.device).expand_as(self.chol)
        inv = torch.linalg.solve_triangular(self.chol, eye, upper=False).to(x.dtype)  # L_k^{-1}
        const = (self.log_weights - self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)).to(x.dtype) \
            - 0.5 * self.features * math.log(2 * math.pi)
        out = []
        for xc in x.split(max(1, chunk // self.codes)):
            z = torch.einsum("kij,nkj->nki", inv, xc[:, None, :] - self.codebook.to(x.dtype))
            out.append(0.5 * z.square().sum(-1) - const)
        return torch.cat(out) if out else x.new_zeros(0, self.codes)

    @torch.no_grad()
    def fit(self, x: Tensor, *, seed: int = 0, sample_points: int = SAMPLE_POINTS, **unused) -> list[float]:
        """Fit the mixture to ``x`` ``(N, D)`` (or a seeded subsample of ``sample_points``); returns
        ``[mean negative log-likelihood of the fitted points]``."""
        pick = _subsample(x.shape[0], sample_points, seed)
        est = fit_gmm((x if pick is None else x[pick.to(x.device)]).cpu().double(), self.codes, seed=seed)
        self.set_mixture(est.weights_, est.means_, est.covariances_)
        return [-float(est.score(x.cpu().double().numpy() if pick is None else x[pick].cpu().double().numpy()))]


PARTITIONS = {"vqae": VQAutoencoder, "kmeans": KMeansCharts, "gmm": GaussianMixtureCharts}


def local_dimension(x: Tensor, cells: int = 32, seed: int = 0, sample_points: int = 5000) -> float:
    r"""The dimension of the data ``(N, D)`` at the scale of ``cells`` charts: each k-means cell's participation
    ratio :math:`(\sum_i \lambda_i)^2 / \sum_i \lambda_i^2` of its covariance's eigenvalues (1 for points along a
    line, 2 for points spread evenly over a plane, ``D`` for a ball), averaged with the cells' sizes.

    About 1.1 on the paper's curves and 2.0 on its spherical shell at 32 cells; a measure of how many
    charts overlap at a point (two along a curve, more on a surface), not an estimate of an exact
    dimension. Runs on a seeded subsample of at most ``sample_points`` points.

    Example:
        >>> t = torch.linspace(0, 6.28, 2000)
        >>> circle = torch.stack([t.cos(), t.sin(), torch.zeros(2000)], -1)
        >>> round(local_dimension(circle), 1)
        1.0
    """
    from sklearn.cluster import KMeans  # deferred: scikit-learn is slow to import

    pick = _subsample(x.shape[0], sample_points, seed)
    points = (x if pick is None else x[pick.to(x.device)]).detach().cpu().double().numpy()
    distinct = np.unique(points, axis=0).shape[0]  # k-means cannot place more centres than distinct points
    k = max(1, min(cells, distinct // (points.shape[1] + 1)))
    labels = KMeans(k, n_init=1, random_state=seed).fit_predict(points)
    ratios, sizes = [], []
    for j in range(k):
        cell = points[labels == j]
        if cell.shape[0] <= points.shape[1]:
            continue
        ev = torch.linalg.eigvalsh(torch.from_numpy(np.cov(cell, rowvar=False).reshape(points.shape[1], -1))).clamp(min=0)
        if float(ev.sum()) > 0:
            ratios.append(float(ev.sum() ** 2 / ev.square().sum()))
            sizes.append(cell.shape[0])
    return float(np.average(ratios, weights=sizes)) if ratios else 1.0
