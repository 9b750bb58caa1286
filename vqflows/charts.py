"""Charts: partitions of the data manifold into K overlapping regions U_1..U_K (paper §4.2.1–4.2.2).

A partitioner gives, for each point, squared distances to the K chart centres, ``(N, D) -> (N, K)``,
and the centres themselves as context vectors ``v_k`` ``(K, C)``. Two partitioners:

* :class:`VQAutoencoder` — encoder E, decoder D and codebook ``v_1..v_K`` in a ``C``-dimensional
  latent space; ``d_k(x) = ||E(x) - v_k||²``.
* :class:`KMeansCharts` — k-means in (standardised) data space; ``d_k(x) = ||x - μ_k||²``, ``C = D``.

Membership (:func:`membership`) keeps the m nearest centres, enlarged by ε; chart weights
(:func:`chart_weights`) follow equation 15.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor, nn


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
    r = member.to(torch.float64).mean(dim=0)
    return r / r.sum()


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
    worst-reconstructed encodings so that all K codes are used.

    Arguments:
        features: ``D``.
        codes: ``K``.
        latent: ``C``, the latent (code) dimension.
        hidden: widths of the encoder (reversed for the decoder).
        beta: commitment weight.
        encoder, decoder: optional custom networks ``(N, D) -> (N, C)`` and ``(N, C) -> (N, D)``.
    """

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

    def distances(self, x: Tensor) -> Tensor:
        """``d_k(x) = ||E(x) - v_k||²``: ``(N, D) -> (N, K)``."""
        return torch.cdist(self.encode(x), self.codebook).square()

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
            seed: int = 0, progress=None) -> list[float]:
        """Train on ``x`` ``(N, D)``; returns the per-epoch mean loss."""
        gen = torch.Generator().manual_seed(seed)
        self.standardise.fit(x)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        n = x.shape[0]
        losses = []
        for epoch in range(epochs):
            if epoch == warmup:
                self._init_codebook(x, seed)
            perm = torch.randperm(n, generator=gen).to(x.device)
            total = 0.0
            for i in range(0, n, batch_size):
                xb = x[perm[i:i + batch_size]]
                if epoch < warmup:  # plain autoencoder until the codebook is placed
                    loss = (self.decoder(self.encode(xb)) - self.standardise(xb)).square().sum(-1).mean()
                else:
                    loss = self.loss(xb).total
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * xb.shape[0]
            if epoch >= warmup:
                self._restart_dead_codes(x, gen)
            losses.append(total / n)
            if progress is not None:
                progress(epoch, losses[-1])
        if epochs <= warmup:
            self._init_codebook(x, seed)
        self._restart_dead_codes(x, gen)
        return losses

    @torch.no_grad()
    def _init_codebook(self, x: Tensor, seed: int) -> None:
        e = self.encode(x).detach().cpu().double().numpy()
        km = KMeans(self.codes, n_init=1, random_state=seed).fit(e)
        self.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.codebook.dtype))

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, gen: torch.Generator) -> None:
        """Move codes that no point uses onto encodings far from every code (probability ∝ distance²)."""
        e = self.encode(x)
        for _ in range(self.codes):
            d2 = torch.cdist(e, self.codebook).square()
            counts = torch.bincount(d2.argmin(-1), minlength=self.codes)
            dead = (counts == 0).nonzero().flatten()
            if len(dead) == 0:
                return
            dmin = d2.min(-1).values.double()
            if float(dmin.sum()) <= 0:
                return  # fewer distinct encodings than codes
            pick = torch.multinomial((dmin / dmin.sum()).cpu(), 1, generator=gen).to(e.device)
            self.codebook[dead[0]] = e[pick[0]]


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

    def distances(self, x: Tensor) -> Tensor:
        return torch.cdist(self.encode(x), self.codebook).square()

    @torch.no_grad()
    def fit(self, x: Tensor, *, seed: int = 0, **unused) -> list[float]:
        self.standardise.fit(x)
        km = KMeans(self.codes, n_init=3, random_state=seed).fit(self.encode(x).cpu().double().numpy())
        self.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.codebook.dtype))
        return [float(km.inertia_) / x.shape[0]]


PARTITIONS = {"vqae": VQAutoencoder, "kmeans": KMeansCharts}
