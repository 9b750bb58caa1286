"""The default optimizer and a learning-rate schedule (:class:`~vqflows.training.TrainConfig` hooks)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

#: An optimizer: ``optimizer(params, lr=..., weight_decay=...)``, e.g. :func:`adam` or ``torch.optim.SGD``.
OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: A scheduler factory: (optimizer, steps per epoch, epochs) → a scheduler stepped after every batch.
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], Any]


def adam(params, lr: float = 2e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam over ``params`` with learning rate ``lr`` and ``weight_decay`` (the fused kernel where torch has it)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """Cosine annealing of the ``optimizer``'s learning rate to 0 at the last of ``steps_per_epoch * epochs`` steps."""
    total = max(1, steps_per_epoch * epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))


__all__ = ["adam", "cosine", "OptimizerFactory", "SchedulerFactory"]
