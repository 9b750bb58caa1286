"""Validation at the public boundary: every user-facing entry point funnels input through here.

Errors are ``ValueError`` with the expected and the received, e.g.
``"x: expected shape (N, 3), got (10, 2)"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where points are checked, so that one_of and positive_int stay light
    import torch
    from torch import Tensor


def as_points(x, features: int | None = None, *, name: str = "x", min_points: int = 1,
              dtype: torch.dtype | None = None) -> Tensor:
    """Return ``x`` as a finite floating tensor of shape ``(N, D)``.

    Arguments:
        x: array-like of shape ``(N, D)``.
        features: the expected ``D``, or ``None`` to accept any.
        name: how the argument is called in error messages.
        min_points: the least ``N`` accepted.
        dtype: cast to this floating dtype (default: keep floating tensors, else float32).
    """
    import torch  # deferred: this module is torch-free for the command line's checks

    if isinstance(x, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(x))
        if masked:
            raise ValueError(f"{name}: expected an array without masked entries, got {masked} masked value(s) "
                             f"(drop those rows or fill them first, e.g. x.filled(value))")
        x = np.ma.getdata(x)
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with values (on the CPU or a GPU), got one on the meta device")
    if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: expected a numeric array of shape (N, {features or 'D'}), got {type(x).__name__}") from e
    if x.is_complex() or x.dtype == torch.bool or not (x.is_floating_point() or _is_integer(x.dtype)):
        raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
    if dtype is not None:
        x = x.to(dtype)
    elif not x.is_floating_point():
        x = x.float()
    want = f"(N, {features})" if features is not None else "(N, D)"
    if x.dim() != 2:
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if features is not None and x.shape[1] != features:
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if x.shape[0] < min_points:
        raise ValueError(f"{name}: expected at least {min_points} points, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} row(s) with NaN or inf")
    return x


def _is_integer(dtype: torch.dtype) -> bool:
    import torch  # deferred: this module is torch-free for the command line's checks

    try:
        torch.iinfo(dtype)
    except TypeError:
        return False
    return True


def spread(x: Tensor, *, name: str = "x", every_column: bool = False) -> Tensor:
    """Check that the points ``(N, D)`` are not all equal; return ``x``.

    No density fits a single point: training would drive the log-likelihood to infinity and stop
    on a non-finite loss, so this is caught before any training. With ``every_column``, a constant
    coordinate is refused too, for models with a full-dimensional density on ``R^D`` (an embedding
    flow, whose density lives on a d-dimensional surface, can fit such data).
    """
    import torch  # deferred: this module is torch-free for the command line's checks

    if x.shape[0] == 0:
        return x
    same = (x == x[:1]).all(dim=0)
    if bool(same.all()):
        raise ValueError(f"{name}: expected data with non-zero spread, got constant values")
    if every_column and bool(same.any()):
        constant = [int(j) for j in torch.nonzero(same).flatten()]
        raise ValueError(f"{name}: expected data with non-zero spread in every column, "
                         f"got constant column(s) {constant}")
    return x


def one_of(value: str, choices: Iterable[str], *, name: str) -> str:
    """Check that ``value`` is one of ``choices`` (case-sensitive)."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def positive_int(value, *, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def seed(value, *, name: str = "seed") -> int:
    """Check that ``value`` is an integer seed in ``[0, 2**32)`` (what torch, NumPy and scikit-learn all take)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**32:
        raise ValueError(f"{name}: expected an integer in [0, 2**32), got {value!r}")
    return int(value)


def device(value, *, name: str = "device") -> torch.device:
    """``value`` as a :class:`torch.device` that exists here; ``ValueError`` for a malformed name or a
    CUDA device on a machine without one."""
    import torch  # deferred: this module is torch-free for the command line's checks

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: expected 'cpu' or 'cuda[:i]', got {str(value)!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: expected 'cpu' here (no CUDA device is available), got {str(value)!r}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}: expected a CUDA device index below {torch.cuda.device_count()}, got {str(value)!r}")
    return dev


def available_memory() -> int | None:
    """Bytes of memory this machine can still give without swapping (``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes / 1e3:.3g} kB"


def fits_in_memory(nbytes: float, *, name: str, what: str, value) -> None:
    """Refuse, before anything is allocated, a request whose estimated size ``nbytes`` exceeds the memory
    available (:func:`available_memory`); ``what`` says what the estimate is of, ``value`` is the request."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(f"{name}: expected a size that fits in memory, got {value!r} (about {_size(nbytes)} for "
                         f"{what}; {_size(free)} available)")


#: How far sphere models let a point lie off their sphere, relative to the radius: ``| |x - m| - r | <= tol r``.
#: Unit vectors stored as float32 (error ~1e-7) or printed to 4 decimals (~1e-4) pass; anything that was
#: not normalised does not.
SPHERE_TOLERANCE = 1e-3


def training_points(x: Tensor, *, charts: int, manifold_dim: int, name: str = "train") -> Tensor:
    """Check that ``x`` ``(N, D)`` can train a model with ``charts`` charts of dimension ``manifold_dim``; return ``x``.

    Refused, each with the fix in the message: constant data; for a full-dimensional density
    (``manifold_dim == D``) a constant column and no more rows than columns (the density would
    collapse onto a subspace); and fewer than ``(manifold_dim + 1) * charts`` distinct points: a
    chart's frame needs ``manifold_dim + 1`` points to span its dimensions, so with fewer the charts
    shrink onto single points and the likelihood grows without bound.
    """
    import torch  # deferred: this module is torch-free for the command line's checks

    n, features = x.shape
    full = manifold_dim >= features
    spread(x, name=name, every_column=full)
    distinct = int(torch.unique(x, dim=0).shape[0]) if n else 0
    if full and distinct <= features:
        raise ValueError(f"{name}: expected more distinct points than columns for a density on R^{features}, got "
                         f"{distinct} distinct point(s) in {n} rows of {features} columns (use more distinct "
                         f"points, or fewer columns, e.g. after PCA)")
    need = (manifold_dim + 1) * charts
    if distinct < need:
        fewer = max(1, distinct // (manifold_dim + 1))
        raise ValueError(f"{name}: expected at least {need} distinct points for {charts} charts ({manifold_dim + 1} "
                         f"per chart), got {distinct}; use charts={fewer} or fewer, or more data")
    return x
