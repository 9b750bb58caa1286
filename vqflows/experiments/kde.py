r"""Sample quality as in the paper's Table 2: a Gaussian KDE of the training data scores samples.

The KDE is :math:`\hat p(x) = \frac{1}{N} \sum_{i=1}^{N} \mathcal{N}(x;\, x_i,\, h^2 I_D)` over the N
training points ``(N, D)``; its bandwidth ``h`` maximises the held-out log-likelihood of 5-fold
cross-validation over a log-spaced grid scaled to the data (:func:`bandwidth_grid`). A model's
score is the mean :math:`\log \hat p` of as many of its samples as the test split has points.
The reference score draws the same number of fresh points from the true generator, with the seed
``REFERENCE_SEED_OFFSET + seed`` so they are independent of the run's own splits.

The chosen bandwidth (and the reference score) depend only on the dataset, the seed and ``n``,
so they are computed once and cached as JSON in a folder shared by all runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold
from sklearn.neighbors import KernelDensity

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

from .. import io
from ..checks import as_points, positive_int
from ..runs import load_data, load_run

#: Relative tolerance of the tree-based KDE sums: 1e-8 changes scores by far less than their
#: trial-to-trial spread and makes scoring several times faster than exact sums near the optimum.
RTOL = 1e-8

#: Fresh generator samples for the reference row use the seed ``REFERENCE_SEED_OFFSET + seed``.
REFERENCE_SEED_OFFSET = 1_000_000


def bandwidth_grid(x, num: int = 16, low: float = 1e-3, high: float = 1.0) -> np.ndarray:
    r"""``num`` log-spaced bandwidths from ``low·σ`` to ``high·σ``, ``σ = sqrt(mean_j Var[x_j])``.

    Scaling by the data's spread keeps the grid meaningful for any units; the range covers a
    thin curve's noise (``≈ 0.01 σ``) up to a smooth blob (``≈ 0.3 σ``).
    """
    x = as_points(x, name="x", min_points=2, dtype=torch.float64).numpy()
    positive_int(num, name="num", minimum=2)
    if not 0 < low < high:
        raise ValueError(f"low, high: expected 0 < low < high, got {low!r}, {high!r}")
    scale = math.sqrt(float(x.var(axis=0).mean()))
    if scale <= 0:
        raise ValueError("x: expected points with a non-zero spread, got identical points")
    return scale * np.logspace(math.log10(low), math.log10(high), num)


def select_bandwidth(x, grid=None, *, folds: int = 5, seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-validated Gaussian KDE bandwidth for the points ``x`` ``(N, D)``.

    Returns ``(h, grid, scores)``: the best bandwidth, the grid tried ``(G,)`` and each one's mean
    held-out log-likelihood per point ``(G,)``. Folds are a seeded shuffle (scikit-learn's ``KFold``),
    so the choice is reproducible whatever the order of ``x``. Each fold's held-out points are scored
    against its training points for every bandwidth from one matrix of squared distances
    (:func:`_held_out_log_density`): exact, where a tree-based ``KernelDensity`` per bandwidth spends
    most of its time on the wide kernels and is off by nats on the narrowest ones, where its sums underflow.
    """
    x = as_points(x, name="x", min_points=2 * folds, dtype=torch.float64).numpy()
    grid = bandwidth_grid(x) if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"grid: expected positive finite bandwidths, got {grid.tolist()!r}")
    cv = KFold(positive_int(folds, name="folds", minimum=2), shuffle=True, random_state=seed)
    points = torch.from_numpy(x)
    totals = np.zeros(grid.size)
    for fit_rows, held_rows in cv.split(x):
        totals += _held_out_log_density(points[fit_rows], points[held_rows], grid)
    scores = totals / x.shape[0]  # every point is held out once: the mean per point
    return float(grid[int(np.argmax(scores))]), grid, scores


#: Kernel exponents below this are taken as it: ``exp(-80) ≈ 2e-35`` of the nearest point's term, and
#: float32 exponentials of smaller numbers are subnormal, which is many times slower.
_FLOOR = -80.0


def _held_out_log_density(fit: torch.Tensor, held: torch.Tensor, grid: np.ndarray, *, cells: int = 1 << 22) -> np.ndarray:
    """Summed Gaussian-KDE log-density of ``held`` ``(M, D)`` under ``fit`` ``(N, D)`` for each bandwidth of
    ``grid`` ``(G,)``, ``-> (G,)``, in blocks of at most ``cells`` distances.

    Per point, ``log Σ_i exp(-d_i² / 2h²)`` is taken relative to its nearest training point (in float64), so
    the sum of the kernel terms (in float32, each at most 1, the nearest exactly 1) never underflows.
    """
    n, d = fit.shape
    out = np.zeros(grid.size)
    for block in held.split(max(1, cells // n)):
        sq = torch.cdist(block, fit, compute_mode="donot_use_mm_for_euclid_dist").square_()
        nearest = sq.min(dim=1, keepdim=True).values
        rel = (sq - nearest).float()
        terms = torch.empty_like(rel)
        nearest = nearest.squeeze(1)
        for j, h in enumerate(grid.tolist()):
            scale = 0.5 / (h * h)
            sums = torch.mul(rel, -scale, out=terms).clamp_(min=_FLOOR).exp_().sum(dim=1).double()
            log_p = sums.log_() - scale * nearest
            out[j] += float(log_p.sum()) - block.shape[0] * (math.log(n) + 0.5 * d * math.log(2 * math.pi * h * h))
    return out


def log_density(train, points, bandwidth: float) -> np.ndarray:
    """KDE log-density of ``points`` ``(M, D)`` under the training points ``(N, D)``, ``-> (M,)``."""
    train = as_points(train, name="train", dtype=torch.float64)
    points = as_points(points, train.shape[1], name="points", dtype=torch.float64)
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth: expected a positive number, got {bandwidth!r}")
    kde = KernelDensity(kernel="gaussian", bandwidth=float(bandwidth), rtol=RTOL).fit(train.numpy())
    return kde.score_samples(points.numpy())


def sample_score(train, samples, bandwidth: float) -> dict:
    """Mean KDE log-density of ``samples`` ``(M, D)``, i.e. one Table 2 entry.

    Returns ``{"samples", "nonfinite", "score"}``. Samples with NaN or inf coordinates (a
    diverging flow) cannot be scored: they are left out and counted in ``"nonfinite"``; the score
    is ``None`` when nothing finite is left.
    """
    samples = torch.as_tensor(np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples)
    if samples.dim() != 2:
        raise ValueError(f"samples: expected shape (M, D), got {tuple(samples.shape)}")
    ok = torch.isfinite(samples).all(dim=1)
    out = {"samples": int(samples.shape[0]), "nonfinite": int((~ok).sum())}
    score = float(log_density(train, samples[ok], bandwidth).mean()) if bool(ok.any()) else math.nan
    out["score"] = score if math.isfinite(score) else None
    return out


def calibrate(cache: str | os.PathLike, splits, *, dataset: str, seed: int, n: int) -> dict:
    """The cached bandwidth and reference score for one dataset, seed and size; computed if missing.

    ``splits`` are the run's :class:`~vqflows.datasets.Splits`. Concurrent workers asking for the
    same entry wait on a file lock instead of repeating the cross-validation.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{Path(dataset).stem}-seed-{seed}-n-{n}.json"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            entry = json.loads(path.read_text())
            if entry.get("n_train") == len(splits.train) and entry.get("n_samples") == len(splits.test):
                return entry
        t0 = time.perf_counter()
        h, grid, scores = select_bandwidth(splits.train)
        entry = {"dataset": dataset, "seed": seed, "n": n, "n_train": len(splits.train),
                 "n_samples": len(splits.test), "bandwidth": h, "grid": grid.tolist(),
                 "cv_log_likelihood": scores.tolist(), "at_grid_edge": bool(h in (grid[0], grid[-1])),
                 "reference_score": None, "reference_seed": None}
        if splits.dataset is not None:
            ref_seed = REFERENCE_SEED_OFFSET + seed
            fresh = splits.dataset.sample(len(splits.test), seed=ref_seed)
            entry["reference_score"] = sample_score(splits.train, fresh, h)["score"]
            entry["reference_seed"] = ref_seed
        entry["seconds"] = time.perf_counter() - t0
        io.write_json(path, entry)
        return entry


def score_run(folder: str | os.PathLike, cache: str | os.PathLike) -> dict:
    """Score a finished run's samples (Table 2) and write ``sample_kde.json`` into its folder."""
    folder = Path(folder)
    model, config = load_run(folder)
    splits = load_data(config)
    entry = calibrate(cache, splits, dataset=config.dataset, seed=config.seed, n=config.n)
    samples = model.sample(len(splits.test), seed=config.seed)
    result = {"dataset": config.dataset, "model": config.model, "seed": config.seed,
              **sample_score(splits.train, samples, entry["bandwidth"]),
              "bandwidth": entry["bandwidth"], "reference_score": entry["reference_score"],
              "reference_seed": entry["reference_seed"]}
    io.write_json(folder / "sample_kde.json", result)
    return result


@contextmanager
def _locked(path: Path):
    if fcntl is None:  # no POSIX locks: workers may repeat the (deterministic) search
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
