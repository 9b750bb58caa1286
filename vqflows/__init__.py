"""vqflows — exact densities on data manifolds with VQ-Flows, mixtures of local normalizing flows.

>>> import vqflows
>>> splits = vqflows.datasets.load("helix", n=10_000, seed=0)
>>> model = vqflows.build(features=3, flow="maf", charts=32)
>>> history = vqflows.fit(model, splits.train, splits.val)
>>> model.log_prob(splits.test).mean()          # exact, nats per point
"""

from __future__ import annotations

from . import datasets, presets
from .model import VQFlow, build
from .runs import MODELS, RunConfig, evaluate_run, load_run, train_run
from .training import EarlyStopping, History, TrainingError, fit, train_flow

__version__ = "0.1.0"

__all__ = ["datasets", "presets", "VQFlow", "build", "fit", "train_flow", "EarlyStopping", "History", "TrainingError", "RunConfig", "MODELS",
           "train_run", "evaluate_run", "load_run"]
