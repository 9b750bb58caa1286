r"""Summaries over trials: mean with a Student-t confidence interval, and which row is best.

For ``n`` trials with values :math:`v_1, \dots, v_n`, mean :math:`\bar v` and sample standard
deviation :math:`s` (``ddof=1``), the half-width of the two-sided confidence interval at level
:math:`1 - \alpha` is

.. math:: h = t_{1 - \alpha / 2,\, n - 1} \; s / \sqrt{n},

the paper's "±" (95%, five trials: :math:`t_{0.975, 4} \approx 2.776`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _stats


@dataclass(frozen=True)
class Summary:
    """The trials of one table cell.

    ``ci`` is the half-width of the confidence interval (``None`` for fewer than two finite
    values), ``std`` the sample standard deviation (``ddof=1``, ``None`` likewise).
    """

    mean: float | None
    ci: float | None
    std: float | None
    n: int
    values: tuple[float, ...] = field(default=())
    seeds: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.ci, "std": self.std, "n": self.n,
                "values": list(self.values), "seeds": list(self.seeds)}


def t_interval(values: Iterable[float], confidence: float = 0.95) -> float | None:
    r"""Half-width :math:`t_{(1+c)/2,\, n-1} \, s / \sqrt{n}` of the Student-t interval of the mean.

    ``None`` for fewer than two values (the spread is unknown).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")
    v = np.asarray(list(values), dtype=np.float64)
    if v.size < 2:
        return None
    s = float(v.std(ddof=1))
    return float(_stats.t.ppf(0.5 + confidence / 2, df=v.size - 1) * s / math.sqrt(v.size))


def summarize(values: Iterable[float | None], seeds: Iterable[int] | None = None,
              confidence: float = 0.95) -> Summary:
    """Mean, t-interval half-width and standard deviation of the finite ``values``.

    Missing (``None``) and non-finite values are left out, so ``n`` counts the trials that
    produced a number; ``seeds`` (same length as ``values``) are kept for the trials used.
    """
    values = list(values)
    seeds = list(seeds) if seeds is not None else list(range(len(values)))
    if len(seeds) != len(values):
        raise ValueError(f"seeds: expected {len(values)} seeds (one per value), got {len(seeds)}")
    kept = [(float(v), s) for v, s in zip(values, seeds) if v is not None and math.isfinite(v)]
    if not kept:
        return Summary(None, None, None, 0)
    v = np.array([k[0] for k in kept])
    std = float(v.std(ddof=1)) if v.size > 1 else None
    return Summary(float(v.mean()), t_interval(v, confidence), std, int(v.size),
                   tuple(k[0] for k in kept), tuple(int(k[1]) for k in kept))


def best_rows(means: Mapping[str, float | None], *, higher: bool = True, decimals: int | None = None) -> set[str]:
    """The keys whose mean is best (highest, or lowest with ``higher=False``).

    With ``decimals``, ties are judged on the values rounded as displayed, so every row that a
    reader sees as best is marked. Missing and non-finite means never win; no finite mean gives
    an empty set.
    """
    finite = {k: float(v) for k, v in means.items() if v is not None and math.isfinite(v)}
    if not finite:
        return set()
    shown = {k: (round(v, decimals) if decimals is not None else v) for k, v in finite.items()}
    target = max(shown.values()) if higher else min(shown.values())
    return {k for k, v in shown.items() if v == target}
