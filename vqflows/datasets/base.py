"""The dataset contract, the registry of built-in sets and the train/validation/test split.

A :class:`Dataset` is a generator with a known density: ``sample(n, seed=...)`` draws ``(N, D)``
float32 points and ``log_prob(x)`` returns the true log-density ``log p(x)`` in float64, so the
best achievable test log-likelihood (the oracle) is known for every built-in set.

Letters: N points, D data dimension (``features``), d manifold dimension.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import as_points, fits_in_memory, one_of, positive_int

#: Default fractions of the points that go to the train, validation and test splits.
SPLITS = (0.5, 0.25, 0.25)

#: Default number of points drawn from a built-in set.
N_POINTS = 10_000

#: Fewest points accepted from a file (or drawn) before splitting.
MIN_POINTS = 10

#: The summary rows of the built-in sets with the default arguments, stored with the package: what
#: :func:`info` returns for them (``python -m vqflows.catalog`` computes and writes the file, which
#: :mod:`vqflows.catalog` serves without torch).
STORED_SUMMARIES = Path(__file__).parents[1] / "catalog.json"


class Dataset:
    """A point cloud generator in ``R^D`` with its exact log-density.

    Subclasses set :attr:`name`, :attr:`features` (``D``) and :attr:`manifold_dim` (``d``, the
    dimension of the set the noise-free generator covers), and implement :meth:`_sample` and
    :meth:`_log_prob` on float64 arrays; the public methods validate and convert.
    """

    name: str
    features: int
    manifold_dim: int

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """Draw ``n`` independent points, ``-> (N, D)`` float32.

        The same ``seed`` gives the same points; ``seed=None`` draws fresh entropy.
        """
        n = positive_int(n, name="n")
        # the draw's float64 intermediates: up to 210 bytes per point of a 3-D set were measured (1e6 points)
        fits_in_memory(80 * self.features * n, name="n", what=f"drawing {n:,} points of {self.name!r}", value=n)
        return torch.from_numpy(self._sample(n, _rng(seed))).float()

    def log_prob(self, x) -> Tensor:
        """The true log-density ``log p(x)``: ``(N, D) -> (N,)`` float64."""
        x = as_points(x, self.features, name="x", dtype=torch.float64)
        return self._log_prob(x)

    def oracle_log_likelihood(self, n: int = 2_500, seed: int | None = 0) -> float:
        r"""Monte Carlo estimate of :math:`E_{x \sim p}[\log p(x)]` over ``n`` fresh points.

        This is the expected test log-likelihood of a perfect model; its standard error is
        ``std(log p) / sqrt(n)``.
        """
        n = positive_int(n, name="n")
        x = torch.from_numpy(self._sample(n, _rng(seed)))
        return float(self._log_prob(x).mean())

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points as a float64 array ``(N, D)``."""
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` for a validated float64 tensor ``(N, D) -> (N,)``."""
        raise NotImplementedError(f"dataset {self.name!r} has no known density")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, features={self.features})"


@dataclass
class Splits:
    """Train, validation and test points of one dataset, each ``(N_split, D)`` float32.

    ``dataset`` is the generating :class:`Dataset` for built-in sets, so that the oracle can
    score the test split (``dataset.log_prob(splits.test)``), and ``None`` for points read
    from a file. For a file, ``path`` is its absolute path and ``sha256`` the digest of the
    bytes the points were read from, so that a run can tell later whether the file changed.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    dataset: Dataset | None = None
    path: str | None = None
    sha256: str | None = None

    @property
    def features(self) -> int:
        """The data dimension ``D``."""
        return self.train.shape[1]


REGISTRY: dict[str, type[Dataset]] = {}


def register(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator adding a :class:`Dataset` to the registry under ``cls.name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"dataset: name {cls.name!r} is already registered to {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Names of the registered datasets, in registration order."""
    return list(REGISTRY)


def get(name: str) -> Dataset:
    """The registered dataset called ``name``.

    Example:
        >>> ds = get("helix")
        >>> ds.sample(4, seed=0).shape
        torch.Size([4, 3])
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset: expected a name, got {type(name).__name__}")
    return REGISTRY[one_of(name, REGISTRY, name="dataset")]()


def split_sizes(n: int, fractions: Sequence[float] = SPLITS) -> tuple[int, int, int]:
    """Sizes ``(train, val, test)`` of ``n`` points cut by ``fractions``; every split non-empty.

    Train and validation sizes are rounded; the test split takes the rest, so the sizes add to ``n``.
    """
    fractions = _check_fractions(fractions)
    train = round(fractions[0] * n)
    val = round(fractions[1] * n)
    sizes = (train, val, n - train - val)
    if min(sizes) < 1:
        raise ValueError(
            f"n: expected enough points for non-empty splits {tuple(fractions)}, got {n} (sizes {sizes})"
        )
    return sizes


def split(points: Tensor, fractions: Sequence[float] = SPLITS, *, seed: int | None = None,
          shuffle: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Cut ``(N, D)`` points into train, validation and test parts, in the proportions ``fractions``.

    With ``shuffle``, rows are permuted first by a generator seeded with ``seed``; without it,
    consecutive blocks are taken, which is already a random split for i.i.d. draws.
    """
    sizes = split_sizes(len(points), fractions)
    if shuffle:
        points = points[torch.from_numpy(_rng(seed).permutation(len(points)))]
    train, val, test = torch.split(points, sizes)
    return train.contiguous(), val.contiguous(), test.contiguous()


def info(n: int = N_POINTS, seed: int = 0, splits: Sequence[float] = SPLITS, *, stored: bool = True) -> list[dict]:
    """One summary row per registered dataset.

    Each row holds ``name``, ``features`` (D), ``manifold_dim`` (d), ``n``, the ``train``,
    ``val`` and ``test`` sizes, and ``oracle``: the mean true log-density of the test split
    that ``load(name, n=n, seed=seed, splits=splits)`` returns (``None`` when the density is
    unknown), i.e. the test log-likelihood of a perfect model.

    With the default ``n``, ``seed`` and ``splits`` and ``stored=True``, the rows of the sets
    that come with the package are read from :data:`STORED_SUMMARIES` (computed once); sets
    registered later, and other arguments, are computed.
    """
    known: dict[str, dict] = {}
    if stored and n == N_POINTS and seed == 0 and tuple(splits) == SPLITS:
        known = {row["name"]: row for row in json.loads(STORED_SUMMARIES.read_text())["rows"]}
    rows = []
    for name in REGISTRY:
        if name in known:
            rows.append(dict(known[name]))
            continue
        s = load_builtin(name, n=n, seed=seed, splits=splits)
        try:
            oracle = float(s.dataset.log_prob(s.test).mean())
        except NotImplementedError:
            oracle = None
        rows.append({"name": name, "features": s.features, "manifold_dim": s.dataset.manifold_dim, "n": n,
                     "train": len(s.train), "val": len(s.val), "test": len(s.test), "oracle": oracle})
    return rows


def load_builtin(name: str, n: int = N_POINTS, seed: int | None = 0, splits: Sequence[float] = SPLITS,
                 min_points: int = MIN_POINTS) -> Splits:
    """Draw ``n`` points of the registered dataset ``name`` and split them (see :func:`split`)."""
    ds = get(name)
    min_points = positive_int(min_points, name="min_points")
    n = positive_int(n, name="n")
    if n < min_points:
        raise ValueError(f"n: expected at least {min_points} points, got {n}")
    split_sizes(n, splits)  # fail before sampling
    train, val, test = split(ds.sample(n, seed=seed), splits, shuffle=False)
    return Splits(name, train, val, test, dataset=ds)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"splits: expected three fractions (train, val, test), got {fractions!r}") from None
    if len(values) != 3 or not all(0 < f < 1 for f in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits: expected three fractions in (0, 1) adding to 1, got {tuple(fractions)!r}")
    return values


def _rng(seed: int | None) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)

