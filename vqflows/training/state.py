"""The state of one training, which the loop's parts and the checkpoint read and update."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..model import VQFlow
from .config import TrainConfig
from .history import History
from .runtime import Ranks


@dataclass
class LoopState:
    """One training's state: what the set-up made and each epoch changes."""

    model: VQFlow
    config: TrainConfig
    ranks: Ranks
    history: History
    fixed: Tensor | None  # the training points, or None when a function draws each epoch's
    draw: Callable[[int], Tensor] | None
    val: Tensor | None  # the early-stopping subset of the validation points
    logits: nn.Parameter | None  # the chart weights' logits, learned with the mixture objective
    frozen: list[nn.Parameter]  # the partition's parameters, fixed while the flow trains
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    step: Callable[[Tensor, Tensor], Tensor]
    gen: torch.Generator
    best: dict[str, Tensor]
    assigned: Tensor | None = None  # the fixed points' charts
    val_top: Tensor | None = None  # the validation points' nearest charts for a top-T check
    val_all: Tensor | None = None  # every validation point, where the check scores a subset and counts epoch 0
    initial: dict[str, Tensor] | None = None  # the model at epoch 0, compared on ``val_all`` at the end
    sched: Any = None
    sched_state: dict | None = None
    since_best: int = 0
    start: int = 1
    t1: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.model.log_weights.device


__all__ = ["LoopState"]
