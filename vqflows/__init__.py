"""vqflows — exact densities on data manifolds with VQ-Flows, mixtures of local normalizing flows.

>>> import vqflows
>>> splits = vqflows.datasets.load("helix", n=1_000, seed=0)        # 500 / 250 / 250 points
>>> model = vqflows.build(features=3, flow="maf", charts=8)
>>> history = vqflows.fit(model, splits.train, splits.val, epochs=2, chart_epochs=2)
>>> model.log_prob(splits.test).shape                               # exact, nats per point
torch.Size([250])

The library's parts: :mod:`~vqflows.datasets` (manifolds with exact oracles, user files, Earth data),
:mod:`~vqflows.geometry` (rotations, stereographic maps, von Mises–Fisher), :mod:`~vqflows.charts`
(partitions), :mod:`~vqflows.frames` (chart frames), :mod:`~vqflows.flows` (chart-map flows),
:mod:`~vqflows.model` (the mixture), :mod:`~vqflows.ensemble` (several atlases stacked into one density),
:mod:`~vqflows.presets` (named recipes), :mod:`~vqflows.training`
(the training loop), :mod:`~vqflows.runs` (run folders); studies live in :mod:`vqflows.experiments`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import datasets, presets, selection
    from .ensemble import VQFlowEnsemble, load
    from .model import VQFlow
    from .recipes import build
    from .runs import MODELS, RunConfig, evaluate_run, load_run, train_run
    from .selection import select_charts
    from .training import EarlyStopping, History, TrainConfig, TrainingError, fit, train_flow

__version__ = "0.1.0"

#: public names and the submodule serving each, imported on first use so that ``import vqflows`` (and
#: the command line's ``--help``) does not pay for torch, zuko and scikit-learn up front
_LAZY = {"datasets": ".datasets", "presets": ".presets", "selection": ".selection", "select_charts": ".selection", "VQFlow": ".model", "build": ".recipes",
         "VQFlowEnsemble": ".ensemble", "load": ".ensemble",
         "History": ".training", "TrainingError": ".training", "EarlyStopping": ".training", "fit": ".training",
         "TrainConfig": ".training",
         "train_flow": ".training", "RunConfig": ".runs", "MODELS": ".runs", "train_run": ".runs",
         "evaluate_run": ".runs", "load_run": ".runs"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name in ("datasets", "presets", "selection") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["MODELS", "EarlyStopping", "History", "RunConfig", "TrainConfig", "TrainingError", "VQFlow", "VQFlowEnsemble", "build",
           "datasets", "evaluate_run", "fit", "load", "load_run", "presets", "select_charts", "selection", "train_flow",
           "train_run"]
