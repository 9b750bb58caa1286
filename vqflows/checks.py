"""Validation at the public boundary: every user-facing entry point funnels input through here.

Errors are ``ValueError`` with the expected and the received, e.g.
``"x: expected shape (N, 3), got (10, 2)"``.
"""

from __future__ import annotations

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
    import torch

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
    import torch

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
    import torch

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
