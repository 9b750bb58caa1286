"""vqflows — exact densities on data manifolds with VQ-Flows, mixtures of local normalizing flows.

>>> import vqflows
>>> splits = vqflows.datasets.load("helix", n=10_000, seed=0)
>>> model = vqflows.VQFlow(features=3, flow="maf", charts=32)
>>> history = vqflows.fit(model, splits.train, splits.val)
>>> model.log_prob(splits.test).mean()          # exact, nats per point
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import datasets
    from .model import VQFlow, build
    from .runs import MODELS, RunConfig, evaluate_run, load_run, train_run
    from .training import History, TrainingError, fit

__version__ = "0.1.0"

#: public names and the submodule serving each, imported on first use so that ``import vqflows`` (and
#: the command line's ``--help``) does not pay for torch, zuko and scikit-learn up front
_LAZY = {"datasets": ".datasets", "VQFlow": ".model", "build": ".model", "History": ".training",
         "TrainingError": ".training", "fit": ".training", "RunConfig": ".runs", "MODELS": ".runs",
         "train_run": ".runs", "evaluate_run": ".runs", "load_run": ".runs"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "datasets" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "MODELS",
    "History",
    "RunConfig",
    "TrainingError",
    "VQFlow",
    "build",
    "datasets",
    "evaluate_run",
    "fit",
    "load_run",
    "train_run",
]
