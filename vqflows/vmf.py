r"""The von Mises–Fisher distribution on the sphere S² and mixtures of it fitted by EM.

Densities are w.r.t. the area measure of the unit sphere (total area 4π):

.. math:: p(x \mid \mu, \kappa) = C(\kappa) \exp(\kappa \mu^\top x), \qquad
          C(\kappa) = \frac{\kappa}{4\pi \sinh \kappa} = \frac{\kappa}{2\pi (1 - e^{-2\kappa})} e^{-\kappa},

so ``log p = log κ - log 2π - log(1 - e^{-2κ}) + κ (μᵀx - 1)``, which stays finite for large κ and
tends to ``-log 4π`` (the uniform density) as κ → 0. A mixture
``p(x) = Σ_k π_k p(x | μ_k, κ_k)`` is fitted by expectation–maximisation (Banerjee et al., 2005,
"Clustering on the unit hypersphere using von Mises–Fisher distributions"), initialised by
spherical k-means. It serves as the classical baseline on the Earth datasets. The density, its
normaliser and the sampler are those of :mod:`vqflows.geometry`; this module adds input checks,
mixtures and EM. Kernel densities built from the same kernels are in :mod:`vqflows.vmf_kde`, and the
VQ-Flow started at one in :mod:`vqflows.kernel_flow`.

Letters: N points, K mixture components.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .checks import as_points, one_of, positive_int
from .geometry import sample_vmf, vmf_log_density, vmf_log_normalizer

__all__ = ["KAPPA_MAX", "MixtureSelection", "VMFMixture", "fit_vmf_mixture", "vmf_log_normalizer", "vmf_log_prob",
           "vmf_sample"]

#: Largest concentration a fitted component may take; keeps components on duplicated points finite.
KAPPA_MAX = 1e4

#: Accepted deviation of ``|x|`` from 1 for points on the sphere.
UNIT_TOL = 1e-4

# Below this κ, coth κ - 1/κ loses digits to cancellation and its Taylor series is used instead.
_SERIES_BELOW = 0.05


def vmf_log_prob(x, mu, kappa) -> Tensor:
    r"""Log-density of von Mises–Fisher distributions on S² w.r.t. the area measure.

    ``log p(x | μ, κ) = log κ - log 2π - log(1 - e^{-2κ}) + κ (μᵀx - 1)``, computed in float64.

    Arguments:
        x: unit vectors, ``(N, 3)``.
        mu: one mean direction ``(3,)`` or ``K`` of them ``(K, 3)``, unit vectors.
        kappa: concentrations ``κ >= 0``; a scalar for ``mu`` of shape ``(3,)``, ``(K,)`` otherwise.

    Returns:
        ``(N,)`` for one distribution, ``(N, K)`` for ``K``; float64 unless ``x`` is a floating
        tensor of another dtype.

    Example:
        >>> x = torch.tensor([[0.0, 0.0, 1.0]])
        >>> vmf_log_prob(x, torch.tensor([0.0, 0.0, 1.0]), 0.0)  # uniform: -log 4π
        tensor([-2.5310])
    """
    out_dtype = x.dtype if isinstance(x, Tensor) and x.is_floating_point() else torch.float64
    x = _unit_points(x, name="x")
    mu = _as_tensor(mu, "mu")
    single = mu.dim() == 1
    mu, kappa = _check_parameters(mu, kappa, single)
    lp = _log_prob_matrix(x, mu, kappa)
    return (lp[:, 0] if single else lp).to(out_dtype)


def vmf_sample(mu, kappa, n: int, rng: np.random.Generator | int | None = None) -> Tensor:
    r"""Exact samples from one von Mises–Fisher distribution on S²: ``-> (n, 3)`` float64.

    On S² the cosine ``w = μᵀx`` has density ``∝ e^{κ w}`` on ``[-1, 1]``, whose CDF inverts in
    closed form (Wood, 1994); the azimuth around ``μ`` is uniform. κ = 0 gives the uniform
    distribution. The draws are those of :func:`vqflows.geometry.sample_vmf`.

    Arguments:
        mu: the mean direction ``(3,)``, a unit vector.
        kappa: the concentration ``κ >= 0``.
        n: the number of samples.
        rng: a NumPy generator, or a seed for a fresh one.
    """
    mu, kappa = _check_parameters(mu, kappa, single=True)
    n = positive_int(n, name="n")
    return _sample(mu[0], kappa[0], n, _generator(rng))


class VMFMixture:
    r"""A mixture of von Mises–Fisher distributions on S²: ``p(x) = Σ_k π_k C(κ_k) e^{κ_k μ_kᵀ x}``.

    Arguments:
        weights: mixture weights ``π``, ``(K,)``, non-negative, adding to 1.
        means: mean directions ``μ``, ``(K, 3)`` unit vectors.
        kappas: concentrations ``κ >= 0``, ``(K,)``.

    Parameters are held as float64 tensors. Use :meth:`fit` to estimate them from data.

    Example:
        >>> x = vmf_sample(torch.tensor([0.0, 0.0, 1.0]), 20.0, 500, rng=0)
        >>> m = VMFMixture.fit(x, components=2, seed=0)
        >>> m.log_prob(x).shape
        torch.Size([500])
    """

    def __init__(self, weights, means, kappas):
        means, kappas = _check_parameters(means, kappas, single=False)
        weights = _as_tensor(weights, "weights")
        if weights.shape != kappas.shape:
            raise ValueError(f"weights: expected shape {tuple(kappas.shape)}, got {tuple(weights.shape)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("weights: expected finite non-negative values")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights: expected values adding to 1, got a sum of {float(weights.sum())}")
        self.weights = weights / weights.sum()
        self.means = means
        self.kappas = kappas
        #: Mean training log-likelihood before each EM step and after the last (set by :meth:`fit`).
        self.history: list[float] = []

    @property
    def components(self) -> int:
        """The number of components ``K``."""
        return len(self.weights)

    def log_prob(self, x) -> Tensor:
        """Log-density w.r.t. the area measure of S²: ``(N, 3) -> (N,)``.

        float64 unless ``x`` is a floating tensor of another dtype.
        """
        out_dtype = x.dtype if isinstance(x, Tensor) and x.is_floating_point() else torch.float64
        return self._log_prob(_unit_points(x, name="x")).to(out_dtype)

    def sample(self, n: int, seed: int | np.random.Generator | None = None) -> Tensor:
        """Draw ``n`` points, ``-> (n, 3)`` float64, in random order; the same seed, the same points."""
        n = positive_int(n, name="n")
        rng = _generator(seed, name="seed")
        counts = rng.multinomial(n, self.weights.numpy())
        parts = []
        for k in np.flatnonzero(counts):
            parts.append(_sample(self.means[k], self.kappas[k], int(counts[k]), rng))
        x = torch.cat(parts)
        return x[torch.from_numpy(rng.permutation(n))]

    @classmethod
    def fit(cls, x, components: int = 10, iters: int = 500, seed: int | None = 0, init: str = "kmeans",
            kappa_max: float = KAPPA_MAX, tol: float = 1e-7) -> VMFMixture:
        r"""Maximum-likelihood mixture by expectation–maximisation.

        E-step: responsibilities ``r_nk ∝ π_k p(x_n | μ_k, κ_k)``. M-step, with ``N_k = Σ_n r_nk``
        and ``s_k = Σ_n r_nk x_n``: ``π_k = N_k / N``, ``μ_k = s_k / |s_k|``, and κ_k solves
        ``A(κ) = coth κ - 1/κ = R̄_k = |s_k| / N_k``. κ starts from Banerjee et al.'s
        approximation ``R̄ (3 - R̄²) / (1 - R̄²)`` and is refined by Newton steps, so the M-step is
        exact and the likelihood never decreases; it is then capped at ``kappa_max`` (the
        likelihood is concave in κ, so the cap is the constrained optimum).

        Arguments:
            x: training points, ``(N, 3)`` unit vectors, ``N >= components``.
            components: ``K``.
            iters: the most EM steps.
            seed: seeds the initialisation.
            init: ``"kmeans"`` (spherical k-means with k-means++ seeding) or ``"random"`` (``K``
                random data points as centres, one assignment step).
            kappa_max: the cap on every κ_k.
            tol: stop when the mean log-likelihood gains less than this per step.

        Components left with no responsibility are dropped, so the result may have fewer than
        ``K`` components. :attr:`history` holds the mean training log-likelihood per step.
        """
        x = _unit_points(x, name="x")
        components = positive_int(components, name="components")
        iters = positive_int(iters, name="iters", minimum=0)
        one_of(init, ("kmeans", "random"), name="init")
        kappa_max = float(kappa_max)
        if not (math.isfinite(kappa_max) and kappa_max > 0):
            raise ValueError(f"kappa_max: expected a finite positive number, got {kappa_max!r}")
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
        if len(x) < components:
            raise ValueError(f"x: expected at least components={components} points, got {len(x)}")

        rng = _generator(seed, name="seed")
        labels = _spherical_kmeans(x, components, rng, iters=50 if init == "kmeans" else 0,
                                   plus_plus=init == "kmeans")
        resp = torch.zeros(len(x), components, dtype=torch.float64)
        resp[torch.arange(len(x)), labels] = 1.0
        weights, means, kappas = _m_step(x, resp, None, None, kappa_max)

        history = []
        for _ in range(iters + 1):
            joint = torch.log(weights) + _log_prob_matrix(x, means, kappas)
            log_px = torch.logsumexp(joint, dim=1, keepdim=True)
            history.append(float(log_px.mean()))
            if len(history) > iters or (len(history) > 1 and history[-1] - history[-2] < tol):
                break
            weights, means, kappas = _m_step(x, torch.exp(joint - log_px), means, kappas, kappa_max)

        keep = weights > 0
        model = cls(weights[keep], means[keep], kappas[keep])
        model.history = history
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters as JSON (``weights``, ``means``, ``kappas``); floats round-trip exactly."""
        state = {"kind": "vmf_mixture", "weights": self.weights.tolist(), "means": self.means.tolist(),
                 "kappas": self.kappas.tolist()}
        Path(path).write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> VMFMixture:
        """Read a mixture written by :meth:`save`."""
        try:
            state = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"path: expected a saved mixture, got {str(path)!r} (not found)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"path: expected JSON, got {str(path)!r} ({e})") from None
        keys = ("weights", "means", "kappas")
        if not isinstance(state, dict) or state.get("kind") != "vmf_mixture" or not all(k in state for k in keys):
            raise ValueError(f"path: expected a saved vMF mixture with {', '.join(keys)}, got {str(path)!r}")
        return cls(state["weights"], state["means"], state["kappas"])

    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(torch.log(self.weights) + _log_prob_matrix(x, self.means, self.kappas), dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(components={self.components})"


class MixtureSelection(NamedTuple):
    """A mixture chosen on validation data.

    Attributes:
        model: the mixture with the best validation log-likelihood.
        components: its requested ``K``.
        val_nll: mean validation negative log-likelihood (nats) for each ``K`` tried.
    """

    model: VMFMixture
    components: int
    val_nll: dict[int, float]


def fit_vmf_mixture(train, val, components: Sequence[int] = (10, 25, 50, 100, 200), seed: int | None = 0,
                    **fit_kwargs) -> MixtureSelection:
    """Fit one mixture per ``K`` in ``components`` on ``train`` and keep the best on ``val``.

    ``K`` larger than the training set is skipped. Further keywords go to :meth:`VMFMixture.fit`.

    Example:
        >>> x = vmf_sample(torch.tensor([1.0, 0.0, 0.0]), 5.0, 400, rng=0)
        >>> sel = fit_vmf_mixture(x[:300], x[300:], components=(1, 2), seed=0)
        >>> sorted(sel.val_nll)
        [1, 2]
    """
    train = _unit_points(train, name="train")
    val = _unit_points(val, name="val")
    try:
        candidates = [positive_int(k, name="components") for k in components]
    except TypeError:
        raise ValueError(f"components: expected a sequence of positive integers, got {components!r}") from None
    candidates = [k for k in dict.fromkeys(candidates) if k <= len(train)]
    if not candidates:
        raise ValueError(f"components: expected at least one K <= {len(train)} training points, got {tuple(components)}")
    best, val_nll = None, {}
    for k in candidates:
        model = VMFMixture.fit(train, components=k, seed=seed, **fit_kwargs)
        val_nll[k] = -float(model._log_prob(val).mean())
        if best is None or val_nll[k] < val_nll[best[1]]:
            best = (model, k)
    return MixtureSelection(best[0], best[1], val_nll)


def _m_step(x: Tensor, resp: Tensor, means: Tensor | None, kappas: Tensor | None,
            kappa_max: float) -> tuple[Tensor, Tensor, Tensor]:
    n_k = resp.sum(0)
    s = resp.T @ x
    norm = torch.linalg.vector_norm(s, dim=1)
    # A component with no mass (or a perfectly balanced one) has no defined mean; it keeps the old one.
    alive = (n_k > 0) & (norm > 0)
    new_means = s / torch.where(alive, norm, torch.ones_like(norm))[:, None]
    if means is not None:
        new_means = torch.where(alive[:, None], new_means, means)
    else:
        new_means = torch.where(alive[:, None], new_means, _any_unit(len(n_k)))
    r_bar = torch.where(alive, norm / torch.where(alive, n_k, torch.ones_like(n_k)), torch.zeros_like(norm))
    new_kappas = _solve_kappa(r_bar.clamp(0.0, 1.0), kappa_max)
    if kappas is not None:
        new_kappas = torch.where(n_k > 0, new_kappas, kappas)
    return n_k / n_k.sum(), new_means, new_kappas


def _mean_resultant_length(kappa: np.ndarray) -> np.ndarray:
    """``A(κ) = coth κ - 1/κ``, by its series where the difference cancels."""
    k = np.maximum(kappa, _SERIES_BELOW)
    k2 = kappa**2
    series = kappa * (1 / 3 - k2 * (1 / 45 - k2 * (2 / 945 - k2 * (1 / 4725 - k2 * 2 / 93555))))
    return np.where(kappa < _SERIES_BELOW, series, 1 / np.tanh(k) - 1 / k)


def _solve_kappa(r_bar: Tensor, kappa_max: float, steps: int = 50) -> Tensor:
    """Solve ``A(κ) = R̄`` elementwise, capped at ``kappa_max``.

    NumPy rather than torch: ``K`` is small and per-operation overhead dominates.
    """
    r = np.clip(r_bar.numpy(), 0.0, 1.0 - 1e-15)
    kappa = np.minimum(r * (3 - r**2) / (1 - r**2), kappa_max)
    for _ in range(steps):
        a = _mean_resultant_length(kappa)
        k = np.maximum(kappa, _SERIES_BELOW)
        # A'(κ) = 1/κ² - 1/sinh²κ for large κ; 1 - A² - 2A/κ in between, where the first cancels.
        slope = np.where(
            kappa > 1.0,
            1 / k**2 - 1 / np.sinh(np.minimum(k, 350.0)) ** 2,
            np.where(kappa < _SERIES_BELOW, 1 / 3 - kappa**2 / 15 + 2 * kappa**4 / 189, 1 - a**2 - 2 * a / k),
        )
        step = (a - r) / slope
        # A is concave, so Newton from any start lands left of the root and then climbs; halving
        # the way to zero keeps the first step from overshooting below it.
        new = np.minimum(np.where(kappa - step > 0, kappa - step, kappa / 2), kappa_max)
        done = np.all(np.abs(new - kappa) <= 1e-14 * np.maximum(new, 1e-300))
        kappa = new
        if done:
            break
    return torch.from_numpy(np.where(r > 0, kappa, 0.0))


def _log_prob_matrix(x: Tensor, mu: Tensor, kappa: Tensor) -> Tensor:
    """``(N, 3), (K, 3), (K,) -> (N, K)`` in float64, inputs already checked."""
    return vmf_log_density(x @ mu.T, kappa)


def _sample(mu: Tensor, kappa: Tensor, n: int, rng: np.random.Generator) -> Tensor:
    """``n`` draws around one checked mean ``(3,)``, ``-> (n, 3)`` float64."""
    return torch.from_numpy(sample_vmf(np.broadcast_to(mu.numpy(), (n, 3)), float(kappa), rng))


def _spherical_kmeans(x: Tensor, k: int, rng: np.random.Generator, iters: int, plus_plus: bool) -> Tensor:
    """Cluster labels ``(N,)`` by cosine similarity; centres seeded by k-means++ or uniformly."""
    n = len(x)
    if plus_plus:
        idx = [int(rng.integers(n))]
        gap = 1 - x @ x[idx[0]]
        for _ in range(1, k):
            p = gap.clamp_min(0).numpy()
            # Fewer distinct points than K: the remaining centres fall on repeats, chosen uniformly.
            j = int(rng.choice(n, p=p / p.sum())) if p.sum() > 0 else int(rng.integers(n))
            idx.append(j)
            gap = torch.minimum(gap, 1 - x @ x[j])
    else:
        idx = rng.choice(n, size=k, replace=False).tolist()
    centres = x[idx].clone()
    labels = torch.argmax(x @ centres.T, dim=1)
    for _ in range(iters):
        s = torch.zeros_like(centres).index_add_(0, labels, x)
        norm = torch.linalg.vector_norm(s, dim=1, keepdim=True)
        centres = torch.where(norm > 0, s / norm.clamp_min(1e-300), centres)
        new = torch.argmax(x @ centres.T, dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _any_unit(k: int) -> Tensor:
    return torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(k, 3)


def _as_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(torch.float64)
    try:
        return torch.from_numpy(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from None


def _unit_points(x, name: str) -> Tensor:
    x = as_points(x, 3, name=name, dtype=torch.float64)
    r = torch.linalg.vector_norm(x, dim=1)
    off = (r - 1).abs()
    if (off > UNIT_TOL).any():
        i = int(torch.argmax(off))
        raise ValueError(f"{name}: expected unit vectors (|x| = 1 within {UNIT_TOL:g}), got |x| = {float(r[i]):.6g} at row {i}")
    return x / r[:, None]


def _check_parameters(mu, kappa, single: bool) -> tuple[Tensor, Tensor]:
    """``mu`` as ``(K, 3)`` unit vectors and ``kappa`` as ``(K,)`` non-negative, float64."""
    mu = _as_tensor(mu, "mu")
    kappa = _as_tensor(kappa, "kappa")
    if single:
        if mu.shape != (3,):
            raise ValueError(f"mu: expected shape (3,), got {tuple(mu.shape)}")
        if kappa.dim() != 0:
            raise ValueError(f"kappa: expected a scalar, got shape {tuple(kappa.shape)}")
        mu, kappa = mu[None], kappa[None]
    else:
        if mu.dim() != 2 or mu.shape[1] != 3 or mu.shape[0] < 1:
            raise ValueError(f"mu: expected shape (K, 3), got {tuple(mu.shape)}")
        if kappa.shape != (mu.shape[0],):
            raise ValueError(f"kappa: expected shape ({mu.shape[0]},), got {tuple(kappa.shape)}")
    if not (torch.isfinite(kappa).all() and (kappa >= 0).all()):
        raise ValueError(f"kappa: expected finite values >= 0, got {kappa.tolist() if kappa.numel() < 8 else 'other'}")
    mu = _unit_points(mu, name="mu")
    return mu, kappa


def _generator(rng, name: str = "rng") -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None and (isinstance(rng, bool) or not isinstance(rng, (int, np.integer)) or rng < 0):
        raise ValueError(f"{name}: expected a numpy Generator, a non-negative integer seed or None, got {rng!r}")
    return np.random.default_rng(rng)
