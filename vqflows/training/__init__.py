"""Training a VQ-Flow: :func:`fit` = fit the charts → fit weights and frames → :func:`train_flow`.

Every setting is a field of one :class:`TrainConfig`; ``fit`` and ``train_flow`` take one and/or
keyword overrides of its fields (``fit(model, x, epochs=5, lr=1e-3)``).

:func:`fit` trains on the mixture over each point's 4 nearest charts by default, chosen over hard
cells by a measured sweep (the documentation's page on the training objective);
``objective="cells"`` reproduces the paper's Table 1 (the objectives: :mod:`.objective`).

Early stopping (:class:`EarlyStopping`) watches the mixture log-likelihood of a fixed random subset
of the validation points, less the flow's penalty, and restores the best weights. By default each
epoch scores the mixture over each point's 8 nearest charts, a lower bound of it at a quarter of the
cost at K = 32 (:data:`CHECK_TOP`).

The parts: :mod:`.config` (the settings, importable without torch), :mod:`.history`,
:mod:`.objective` (losses and the check's score), :mod:`.loop` (set-up, one epoch, the check),
:mod:`.callbacks` (the progress bar), :mod:`.checkpoint` (the state after a finished epoch, resumed only
by the same fit), :mod:`.runtime` (device, threads, data-parallel ranks), :mod:`.optim` (Adam, cosine
schedule) and :mod:`.fitting` (the three stages).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import (
    CHECK_TOP,
    MEMBERSHIPS,
    OBJECTIVES,
    EarlyStopping,
    TrainConfig,
    check_threads,
    default_early_stopping,
)
from .history import History, TrainingError

if TYPE_CHECKING:
    from .checkpoint import digest, read_checkpoint
    from .fitting import fit, fit_chart_weights, fit_partition
    from .loop import train_flow
    from .objective import cell_loss, mixture_loss, nearest_penalty
    from .optim import adam, cosine
    from .runtime import interactive, resolve_device, torch_threads

#: names served by the parts that need torch, imported on first use so that the settings above
#: (:class:`TrainConfig`, :class:`EarlyStopping`, :class:`History`) load without torch
_LAZY = {"fit": ".fitting", "fit_partition": ".fitting", "fit_chart_weights": ".fitting", "train_flow": ".loop", "adam": ".optim", "cosine": ".optim",
         "resolve_device": ".runtime", "torch_threads": ".runtime", "interactive": ".runtime", "digest": ".checkpoint",
         "read_checkpoint": ".checkpoint", "cell_loss": ".objective", "mixture_loss": ".objective",
         "nearest_penalty": ".objective"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["fit", "fit_partition", "fit_chart_weights", "train_flow", "TrainConfig", "EarlyStopping", "History", "TrainingError", "adam", "cosine",
           "resolve_device", "torch_threads", "interactive", "check_threads", "digest", "read_checkpoint", "OBJECTIVES", "MEMBERSHIPS",
           "CHECK_TOP", "default_early_stopping", "cell_loss", "mixture_loss", "nearest_penalty"]
