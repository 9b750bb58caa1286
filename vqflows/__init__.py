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
:mod:`~vqflows.model` (the mixture), :mod:`~vqflows.presets` (named recipes), :mod:`~vqflows.training`
(the training loop), :mod:`~vqflows.runs` (run folders); studies live in :mod:`vqflows.experiments`.
"""

from __future__ import annotations

from . import datasets, presets
from .model import VQFlow, build
from .runs import MODELS, RunConfig, evaluate_run, load_run, train_run
from .training import EarlyStopping, History, TrainingError, fit, train_flow

__version__ = "0.1.0"

__all__ = ["datasets", "presets", "VQFlow", "build", "fit", "train_flow", "EarlyStopping", "History", "TrainingError", "RunConfig", "MODELS",
           "train_run", "evaluate_run", "load_run"]
