"""Classical density estimates, fitted and sized on validation data: the baselines every study reports.

A user with points on a curve or a surface first tries scikit-learn's ``GaussianMixture`` and
``KernelDensity``; the studies fit both on the same splits as the flows, with their size chosen on
the validation split:

* ``"gmm"``: full-covariance Gaussian mixture, ``n_components`` from :data:`GMM_COMPONENTS` (counts
  above half the training points are skipped), ``random_state=seed``, ``reg_covar=1e-6``;
* ``"kde"``: Gaussian kernel density on the training points, bandwidth from :data:`KDE_BANDWIDTHS`
  (30 log-spaced values in ``[0.005, 0.5]``, in data units).

:func:`fit_baseline` returns a :class:`Classical`, which scores (``log_prob``), samples, saves and
loads like a model, so a baseline run folder is read by the same code as a flow's.

Example:
    >>> from vqflows import datasets
    >>> s = datasets.load("helix", n=1_000, seed=0)
    >>> est = fit_baseline("gmm", s.train, s.val, seed=0, candidates=(4, 8))
    >>> est.log_prob(s.test).shape, est.sample(5, seed=0).shape
    (torch.Size([250]), torch.Size([5, 3]))
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import as_points, one_of, positive_int
from .io import write_json
from .presets import BASELINES

#: Component counts tried by ``"gmm"``.
GMM_COMPONENTS = (8, 16, 32, 64, 128, 200)
#: Bandwidths tried by ``"kde"``.
KDE_BANDWIDTHS = tuple(float(h) for h in np.logspace(math.log10(0.005), math.log10(0.5), 30))
#: Relative tolerance of the kernel sums (scikit-learn's tree): changes scores by far less than 1e-6 nats
#: and scores several times faster than exact sums.
RTOL = 1e-8
#: ``GaussianMixture`` settings.
GMM_OPTIONS = {"covariance_type": "full", "reg_covar": 1e-6, "max_iter": 300}


def _numpy(x, features: int | None = None, name: str = "x") -> np.ndarray:
    return as_points(x, features, name=name, dtype=torch.float64).cpu().numpy()


class Classical:
    """A fitted classical density (``kind`` ``"gmm"`` or ``"kde"``) with the interface of a model.

    Attributes:
        kind: ``"gmm"`` or ``"kde"``.
        estimator: the fitted ``GaussianMixture`` or ``KernelDensity``.
        features: ``D``.
        selection: one row per size tried, ``{"size", "val_log_likelihood", "seconds"}``.
        size: the chosen ``n_components`` or bandwidth.
    """

    def __init__(self, kind: str, estimator: Any, features: int, *, size: float,
                 selection: list[dict] | None = None) -> None:
        self.kind, self.estimator, self.features = one_of(kind, BASELINES, name="kind"), estimator, features
        self.size, self.selection = size, list(selection or [])

    def to(self, *args, **kwargs) -> Classical:
        """Nothing to move (scikit-learn estimators live on the CPU); returns ``self``."""
        return self

    def eval(self) -> Classical:
        return self

    @property
    def parameters(self) -> int:
        """Number of fitted values: weights, means and covariances, or the stored points and the bandwidth."""
        d, est = self.features, self.estimator
        if self.kind == "gmm":
            return int(len(est.weights_) * (1 + d + d * (d + 1) // 2) - 1)
        return int(np.asarray(est.tree_.data).size + 1)

    def log_prob(self, x, *args, **kwargs) -> torch.Tensor:
        """Exact log-density, ``(N, D) -> (N,)`` float64."""
        return torch.from_numpy(np.asarray(self.estimator.score_samples(_numpy(x, self.features)), dtype=np.float64))

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """``n`` draws ``(n, D)`` float64 (seeded when ``seed`` is given)."""
        n = positive_int(n, name="n")
        if self.kind == "kde":
            return torch.from_numpy(self.estimator.sample(n, random_state=seed))
        rng = np.random.default_rng(seed)
        est = self.estimator
        counts = rng.multinomial(n, est.weights_ / est.weights_.sum())
        chol = np.linalg.cholesky(est.covariances_)
        parts = [est.means_[k] + rng.standard_normal((c, self.features)) @ chol[k].T
                 for k, c in enumerate(counts) if c]
        x = np.concatenate(parts)
        return torch.from_numpy(x[rng.permutation(n)])

    # ----------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``baseline.json`` (kind, size, selection) and ``baseline.npz`` (the parameters) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        est = self.estimator
        if self.kind == "gmm":
            arrays = {"weights": est.weights_, "means": est.means_, "covariances": est.covariances_}
        else:
            arrays = {"points": np.asarray(est.tree_.data)}
        tmp = path / "baseline.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path / "baseline.npz")
        write_json(path / "baseline.json", {"kind": self.kind, "features": self.features, "size": self.size,
                                            "selection": self.selection})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classical:
        """Rebuild a baseline saved by :meth:`save` (also accepts a run folder holding ``model/``)."""
        path = Path(path)
        if (path / "model" / "baseline.json").exists():
            path = path / "model"
        try:
            meta = json.loads((path / "baseline.json").read_text())
            arrays = np.load(path / "baseline.npz", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"path: expected a folder with baseline.json and baseline.npz, got {str(path)!r} "
                             f"({type(e).__name__})") from None
        if meta.get("kind") == "gmm":
            est = gmm_from(arrays["weights"], arrays["means"], arrays["covariances"])
        elif meta.get("kind") == "kde":
            est = _kde(arrays["points"], float(meta["size"]))
        else:
            raise ValueError(f"baseline.json: expected kind 'gmm' or 'kde', got {meta.get('kind')!r}")
        return cls(meta["kind"], est, int(meta["features"]), size=meta["size"], selection=meta.get("selection"))

    def __repr__(self) -> str:
        what = "n_components" if self.kind == "gmm" else "bandwidth"
        return f"Classical({self.kind!r}, {what}={self.size})"


def gmm_from(weights, means, covariances):
    """A ``GaussianMixture`` with the given parameters ``(K,), (K, D), (K, D, D)``, ready to score and sample."""
    from scipy import linalg  # deferred: scipy is slow to import
    from sklearn.mixture import GaussianMixture  # deferred: scikit-learn is slow to import

    est = GaussianMixture(len(weights), **GMM_OPTIONS)
    est.weights_, est.means_ = np.asarray(weights, float), np.asarray(means, float)
    est.covariances_ = np.asarray(covariances, float)
    eye = np.eye(est.means_.shape[1])  # Σ_k = L_k L_kᵀ, and the precision's Cholesky factor is L_k^{-T}
    est.precisions_cholesky_ = np.stack([linalg.solve_triangular(linalg.cholesky(c, lower=True), eye, lower=True).T
                                         for c in est.covariances_])
    est.precisions_ = est.precisions_cholesky_ @ np.swapaxes(est.precisions_cholesky_, -1, -2)
    est.converged_, est.n_iter_, est.lower_bound_ = True, 0, -np.inf
    est.n_features_in_ = est.means_.shape[1]
    return est


def fit_gmm(train, components: int, *, seed: int = 0):
    """A full-covariance ``GaussianMixture`` of ``components`` components fitted to ``train`` ``(N, D)``."""
    from sklearn.mixture import GaussianMixture  # deferred: scikit-learn is slow to import

    return GaussianMixture(positive_int(components, name="components"), random_state=seed,
                           **GMM_OPTIONS).fit(_numpy(train, name="train"))


def _kde(train: np.ndarray, bandwidth: float):
    from sklearn.neighbors import KernelDensity  # deferred: scikit-learn is slow to import

    return KernelDensity(kernel="gaussian", bandwidth=bandwidth, rtol=RTOL).fit(train)


def fit_baseline(kind: str, train, val, *, seed: int = 0, candidates: Sequence[float] | None = None,
                 patience: int | None = None) -> Classical:
    """Fit the baseline ``kind`` for every size in ``candidates`` and keep the best on ``val``.

    Arguments:
        kind: ``"gmm"`` or ``"kde"``.
        train, val: points ``(N, D)`` and ``(M, D)``.
        seed: the mixture's ``random_state`` (the kernel estimate is deterministic).
        candidates: component counts (default :data:`GMM_COMPONENTS`) or bandwidths (default :data:`KDE_BANDWIDTHS`).
        patience: stop after this many sizes in a row that score below the best (``None``: try every size).
    """
    one_of(kind, BASELINES, name="model")
    x = _numpy(train, name="train")
    v = _numpy(val, x.shape[1], name="val")
    if len(x) < 2 or len(v) < 1:
        raise ValueError(f"train, val: expected at least 2 and 1 points, got {len(x)} and {len(v)}")
    sizes = list(candidates if candidates is not None else (GMM_COMPONENTS if kind == "gmm" else KDE_BANDWIDTHS))
    if not sizes:
        raise ValueError(f"candidates: expected a non-empty sequence, got {candidates!r}")
    if kind == "gmm":
        sizes = [positive_int(int(k), name="candidates") for k in sizes]
        kept = [k for k in sizes if k <= len(x) // 2]
        if not kept:
            raise ValueError(f"candidates: expected a component count of at most half the {len(x)} training "
                             f"points, got {sizes}")
        sizes = kept
    elif not all(isinstance(h, (int, float)) and math.isfinite(h) and h > 0 for h in sizes):
        raise ValueError(f"candidates: expected positive bandwidths, got {sizes!r}")
    best, table, worse = None, [], 0
    for size in sizes:
        t0 = time.perf_counter()
        est = fit_gmm(x, size, seed=seed) if kind == "gmm" else _kde(x, float(size))
        score = float(np.mean(est.score_samples(v)))
        table.append({"size": size, "val_log_likelihood": score, "seconds": time.perf_counter() - t0})
        if best is None or (math.isfinite(score) and score > best[0]):
            best, worse = (score, est, size), 0
        else:
            worse += 1
            if patience is not None and worse >= patience:
                break
    return Classical(kind, best[1], x.shape[1], size=best[2], selection=table)


__all__ = ["BASELINES", "GMM_COMPONENTS", "KDE_BANDWIDTHS", "Classical", "fit_baseline", "fit_gmm", "gmm_from"]
