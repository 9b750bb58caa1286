r"""Two-dimensional sets with exact densities, for plots and normalisation tests.

Their densities can be integrated on a grid, so a model (or an oracle) that should integrate
to 1 can be checked directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Dataset, register
from .manifolds import Curve, _stack

_LOG_2PI = math.log(2 * math.pi)


@register
class Rings(Dataset):
    r"""Two concentric rings: angle uniform, radius from :math:`\tfrac12 N(1, 0.1^2) + \tfrac12 N(2, 0.1^2)`.

    With :math:`p_r` that radius mixture and ``ρ = ‖x‖`` (a negative radius lands on the
    opposite side, hence the second term),

    .. math:: p(x) = \frac{p_r(\rho) + p_r(-\rho)}{2\pi\rho}.
    """

    name = "rings"
    features = 2
    manifold_dim = 1
    radii = (1.0, 2.0)
    radius_noise = 0.1

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ring = rng.integers(len(self.radii), size=n)
        r = rng.normal(np.asarray(self.radii)[ring], self.radius_noise)
        angle = rng.uniform(0, 2 * math.pi, size=n)
        return r[:, None] * _stack(np.cos(angle), np.sin(angle))

    def _log_prob(self, x: Tensor) -> Tensor:
        rho = x.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)
        radii = torch.tensor(self.radii, dtype=x.dtype)
        both = torch.cat([rho, -rho])[:, None]
        z = (both - radii) / self.radius_noise
        log_pr = torch.logsumexp(-0.5 * z.square(), dim=1) - math.log(self.radius_noise * len(self.radii)) - 0.5 * _LOG_2PI
        return torch.logaddexp(*log_pr.chunk(2)) - math.log(2 * math.pi) - rho.log()


@register
class EightGaussians(Dataset):
    r"""Eight isotropic Gaussians of scale 0.2 at radius 2, angles ``2πk/8``, equal weights.

    .. math:: p(x) = \frac18 \sum_{k=0}^{7} N(x; 2(\cos\tfrac{2\pi k}{8}, \sin\tfrac{2\pi k}{8}), 0.2^2 I)
    """

    name = "eight-gaussians"
    features = 2
    manifold_dim = 0
    components = 8
    radius = 2.0
    noise = 0.2

    def _centres(self) -> np.ndarray:
        angle = 2 * math.pi * np.arange(self.components) / self.components
        return self.radius * _stack(np.cos(angle), np.sin(angle))

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.integers(self.components, size=n)
        return self._centres()[k] + self.noise * rng.standard_normal((n, 2))

    def _log_prob(self, x: Tensor) -> Tensor:
        mu = torch.from_numpy(self._centres())
        d2 = (x[:, None, :] - mu).square().sum(-1)
        log_n = -d2 / (2 * self.noise**2) - 2 * math.log(self.noise) - _LOG_2PI
        return torch.logsumexp(log_n, dim=1) - math.log(self.components)


@register
class Moons(Curve):
    r"""Two interleaving half circles ``(cos θ, sin θ)`` and ``(1 − cos θ, ½ − sin θ)``, ``θ ∈ [0, π]``,
    shifted by ``(−½, −¼)`` to centre them, ``s = 1``, ``σ = 0.1``; density as for every :class:`Curve`.
    """

    name, features = "moons", 2
    bounds, scale, noise = (0.0, math.pi), 1.0, 0.1

    @staticmethod
    def gamma(t):
        c, s = np.cos(t), np.sin(t)
        return np.stack([_stack(c - 0.5, s - 0.25), _stack(0.5 - c, 0.25 - s)])
