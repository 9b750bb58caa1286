r"""Datasets with known densities, and loading of the user's own points.

Built-in sets (``names()``): the 3-D manifolds ``spherical``, ``helix``, ``lissajous``,
``knotted``, ``twisted-eight``, ``interlocked-circles``, ``disjoint-circles`` and the 2-D sets
``rings``, ``eight-gaussians``, ``moons``. Each exposes its true log-density, so the best
achievable test log-likelihood is known.

Example:
    >>> from vqflows import datasets
    >>> s = datasets.load("helix", n=10_000, seed=0)
    >>> s.train.shape, s.val.shape, s.test.shape
    (torch.Size([5000, 3]), torch.Size([2500, 3]), torch.Size([2500, 3]))
    >>> lp = s.dataset.log_prob(s.test)  # (2500,) float64, the oracle

Adding a set is one decorated class: subclass :class:`Dataset` (or :class:`Curve`) and mark
it with ``@register``.
"""

from __future__ import annotations

from .base import (
    MIN_POINTS,
    N_POINTS,
    REGISTRY,
    SPLITS,
    Dataset,
    Splits,
    get,
    info,
    names,
    register,
    split,
    split_sizes,
)
from .files import load, read_points
from .manifolds import (
    Curve,
    DisjointCircles,
    Helix,
    InterlockedCircles,
    Knotted,
    Lissajous,
    Spherical,
    TwistedEight,
)
from .planar import EightGaussians, Moons, Rings

__all__ = [
    "MIN_POINTS",
    "N_POINTS",
    "REGISTRY",
    "SPLITS",
    "Curve",
    "Dataset",
    "DisjointCircles",
    "EightGaussians",
    "Helix",
    "InterlockedCircles",
    "Knotted",
    "Lissajous",
    "Moons",
    "Rings",
    "Spherical",
    "Splits",
    "TwistedEight",
    "get",
    "info",
    "load",
    "names",
    "read_points",
    "register",
    "split",
    "split_sizes",
]
