r"""Noisy low-dimensional manifolds in ``R^3`` with exact densities: six curves and a sphere.

Curves: a point is :math:`x = s\,\gamma_b(\theta) + \sigma\varepsilon` with the branch ``b``
uniform over the curve's branches, :math:`\theta \sim U[\theta_0, \theta_1]` and
:math:`\varepsilon \sim N(0, I_D)`, so its density is the mixture

.. math:: p(x) = \frac{1}{B} \sum_b \int p(\theta)\, N(x; s\,\gamma_b(\theta), \sigma^2 I)\, d\theta,

computed by the trapezoidal rule on a θ grid whose spacing along the scaled curve is at most
``σ / 2`` for closed curves and ``σ / 8`` for open ones (doubling the grid moves ``log p`` by
less than 0.01 nats), with log-sum-exp over grid nodes and branches.

Sphere: a direction ``u`` from an equal mixture of von Mises–Fisher caps on ``S^2`` times a
radius :math:`r \sim N(4, 0.1^2)`; see :class:`Spherical`.

The curve parametrisations follow the public generator of Probabilistic Flow Circuits
(adapted from VQ-Flows), with θ drawn uniformly at random.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..checks import positive_int
from ..geometry import sample_vmf, vmf_log_prob
from .base import Dataset, register

_LOG_2PI = math.log(2 * math.pi)


class Curve(Dataset):
    r"""A noisy curve (or union of curves) ``x = s γ_b(θ) + σ ε`` in ``R^D``.

    Subclasses set :attr:`bounds` ``(θ0, θ1)``, :attr:`scale` ``s``, :attr:`noise` ``σ`` and
    :meth:`gamma`, which maps ``θ`` of shape ``(G,)`` to every branch, ``(B, G, D)``.

    Arguments:
        nodes: quadrature nodes per branch (default: :meth:`default_nodes`).
        chunk: points scored at a time, bounding memory to about ``chunk × B × nodes`` floats.
    """

    manifold_dim = 1
    bounds: tuple[float, float]
    scale: float
    noise: float

    def __init__(self, *, nodes: int | None = None, chunk: int = 256):
        self.nodes = self.default_nodes() if nodes is None else positive_int(nodes, name="nodes", minimum=2)
        self.chunk = positive_int(chunk, name="chunk")
        theta = np.linspace(*self.bounds, self.nodes)
        branches = self.gamma(theta)
        self.branches = branches.shape[0]
        # Trapezoidal weights of the uniform p(θ) on [θ0, θ1]; they sum to 1 exactly, and for
        # a periodic γ the rule equals the spectrally accurate periodic rectangle rule.
        w = np.full(self.nodes, 1.0)
        w[[0, -1]] = 0.5
        log_w = np.log(w / w.sum()) - math.log(self.branches)
        self._centres = torch.from_numpy(self.scale * branches.reshape(-1, self.features))
        self._log_w = torch.from_numpy(np.tile(log_w, self.branches))

    @staticmethod
    def gamma(theta: np.ndarray) -> np.ndarray:
        """The noise-free branches at ``θ``: ``(G,) -> (B, G, D)``."""
        raise NotImplementedError

    @classmethod
    def default_nodes(cls) -> int:
        """Nodes giving every branch of ``s γ`` a spacing of at most ``σ / 2`` if the curve is
        closed, ``σ / 8`` if not.

        For a closed curve the rule is periodic and its error falls like
        ``exp(-2π² (σ / h)²)`` in the spacing ``h``; an open curve's ends cut the Gaussian
        kernel, where the trapezoidal error is only ``O(h² / σ²)``.
        """
        theta = np.linspace(*cls.bounds, 20_001)
        path = cls.gamma(theta)  # (B, G, D)
        steps = np.linalg.norm(np.diff(path, axis=1), axis=-1)
        max_speed = cls.scale * steps.max() / (theta[1] - theta[0])
        closed = np.allclose(path[:, 0], path[:, -1], atol=1e-12)
        spacing = cls.noise / (2 if closed else 8)
        return math.ceil((cls.bounds[1] - cls.bounds[0]) * max_speed / spacing) + 1

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        theta = rng.uniform(*self.bounds, size=n)
        branch = rng.integers(self.branches, size=n)
        eps = rng.standard_normal((n, self.features))
        on_curve = self.gamma(theta)[branch, np.arange(n)]
        return self.scale * on_curve + self.noise * eps

    def _log_prob(self, x: Tensor) -> Tensor:
        mu, log_w = self._centres, self._log_w
        mu2 = mu.square().sum(-1)
        const = -0.5 * self.features * (_LOG_2PI + 2 * math.log(self.noise))
        out = []
        for xc in x.split(self.chunk):
            # The expanded form runs as one matrix product. Its float64 cancellation error in d2
            # is about 1e-16 ‖x‖², below 1e-10 nats wherever the density is not negligible
            # (‖x‖ under 25 for these curves); far away only the relative error matters.
            d2 = (xc.square().sum(-1, keepdim=True) - 2 * xc @ mu.T + mu2).clamp_min(0)
            out.append(_logsumexp(log_w - d2 / (2 * self.noise**2)))
        return torch.cat(out) + const


def _logsumexp(a: Tensor) -> Tensor:
    """``log Σ_j exp(a_ij)`` over rows ``(N, M) -> (N,)``.

    Terms more than 700 below a row's maximum are raised to that floor: they change the sum by
    under ``M e^{-700}`` relative, and it keeps ``exp`` out of subnormal numbers, which are
    several times slower on common CPUs.
    """
    top = a.amax(dim=1, keepdim=True)
    return (a - top).clamp_min_(-700.0).exp_().sum(dim=1).log_() + top.squeeze(1)


def _stack(*coords) -> np.ndarray:
    """Stack coordinate arrays (or scalars) of shape ``(G,)`` into ``(G, D)``."""
    shape = np.broadcast(*coords).shape
    return np.stack([np.broadcast_to(c, shape) for c in coords], axis=-1)


@register
class Spherical(Dataset):
    r"""Three von Mises–Fisher caps on a sphere of radius 4: ``x = r u``.

    ``u`` is drawn from an equal mixture of vMF densities on ``S^2`` with concentration
    ``κ = 8`` and means ``(0, 0, 1)``, ``(-1, 0, 0)``, ``(0, 0, -1)``,

    .. math:: p_u(u) = \frac{1}{3} \sum_k \frac{\kappa}{2\pi (1 - e^{-2\kappa})} e^{\kappa (\mu_k^\top u - 1)},

    and :math:`r \sim N(4, 0.1^2)`. A negative ``r`` maps to ``|r|`` and ``-u``, so in polar
    coordinates with ``ρ = ‖x‖``

    .. math:: p(x) = \frac{p_u(x/\rho)\, N(\rho; 4, 0.1^2) + p_u(-x/\rho)\, N(-\rho; 4, 0.1^2)}{\rho^2}.
    """

    name = "spherical"
    features = 3
    manifold_dim = 2
    means = ((0.0, 0.0, 1.0), (-1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
    concentration = 8.0
    radius = 4.0
    radius_noise = 0.1

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        means = np.asarray(self.means)
        component = rng.integers(len(means), size=n)
        u = sample_vmf(means[component], self.concentration, rng)
        r = rng.normal(self.radius, self.radius_noise, size=n)
        return r[:, None] * u

    def _log_prob(self, x: Tensor) -> Tensor:
        rho = x.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)
        u = x / rho[:, None]
        inner = _log_normal(rho, self.radius, self.radius_noise) + self.direction_log_prob(u)
        outer = _log_normal(-rho, self.radius, self.radius_noise) + self.direction_log_prob(-u)
        return torch.logaddexp(inner, outer) - 2 * rho.log()

    def direction_log_prob(self, u: Tensor) -> Tensor:
        """``log p_u(u)`` w.r.t. the area of the unit sphere: ``(N, 3) -> (N,)``, ``u`` unit."""
        means = torch.tensor(self.means, dtype=u.dtype, device=u.device)
        return torch.logsumexp(vmf_log_prob(u[:, None, :], means, self.concentration), dim=1) - math.log(len(self.means))


def _log_normal(x: Tensor, loc: float, scale: float) -> Tensor:
    return -0.5 * ((x - loc) / scale).square() - math.log(scale) - 0.5 * _LOG_2PI


@register
class Helix(Curve):
    """``γ(θ) = (θ, cos θ, sin θ)``, ``θ ∈ [0, 6π]``, ``s = 1``, ``σ = 0.05``."""

    name, features = "helix", 3
    bounds, scale, noise = (0.0, 6 * math.pi), 1.0, 0.05

    @staticmethod
    def gamma(t):
        return _stack(t, np.cos(t), np.sin(t))[None]


class _Loop(Curve):
    """A closed curve (or two) in ``R³`` on ``θ ∈ [-π, π]``, ``s = 4``, ``σ = 0.1``: the Lissajous, knotted
    and two-circle sets."""

    features = 3
    bounds, scale, noise = (-math.pi, math.pi), 4.0, 0.1


@register
class Lissajous(_Loop):
    """``γ(θ) = (sin 2θ, cos θ, cos 2θ)``, ``θ ∈ [-π, π]``, ``s = 4``, ``σ = 0.1``."""

    name = "lissajous"

    @staticmethod
    def gamma(t):
        return _stack(np.sin(2 * t), np.cos(t), np.cos(2 * t))[None]


@register
class Knotted(_Loop):
    """A trefoil ``γ(θ) = (sin θ + 2 sin 2θ, cos θ − 2 cos 2θ, sin 3θ)``, ``θ ∈ [-π, π]``, ``s = 4``, ``σ = 0.1``."""

    name = "knotted"

    @staticmethod
    def gamma(t):
        return _stack(np.sin(t) + 2 * np.sin(2 * t), np.cos(t) - 2 * np.cos(2 * t), np.sin(3 * t))[None]


class _TwoCircles(_Loop):
    """Two unit circles in perpendicular planes, ``(sin θ, cos θ, 0)`` and ``(offset + sin θ, 0, cos θ)``;
    subclasses set :attr:`offset`."""

    offset: int

    @classmethod
    def gamma(cls, t):
        return np.stack([_stack(np.sin(t), np.cos(t), 0.0), _stack(cls.offset + np.sin(t), 0.0, np.cos(t))])


@register
class TwistedEight(_TwoCircles):
    """Two touching circles ``(sin θ, cos θ, 0)`` and ``(2 + sin θ, 0, cos θ)``, ``s = 4``, ``σ = 0.1``."""

    name, offset = "twisted-eight", 2


@register
class InterlockedCircles(_TwoCircles):
    """A Hopf link ``(sin θ, cos θ, 0)`` and ``(1 + sin θ, 0, cos θ)``, ``s = 4``, ``σ = 0.1``."""

    name, offset = "interlocked-circles", 1


@register
class DisjointCircles(Curve):
    """Branches ``(-2 + sin θ, -1 + sin θ, -1 + sin θ)`` and ``(2 + sin θ, 1 + 2 cos θ, 1 + 2 cos θ)``, ``s = 2``, ``σ = 0.05``.

    As specified, the first branch traces a segment along ``(1, 1, 1)`` back and forth (its
    θ-density piles up at the segment's ends) and the second an ellipse in the plane ``y = z``.
    """

    name, features = "disjoint-circles", 3
    bounds, scale, noise = (-math.pi, math.pi), 2.0, 0.05

    @staticmethod
    def gamma(t):
        s, c = np.sin(t), np.cos(t)
        return np.stack([_stack(-2 + s, -1 + s, -1 + s), _stack(2 + s, 1 + 2 * c, 1 + 2 * c)])

