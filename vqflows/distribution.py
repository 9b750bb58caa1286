"""A fitted :class:`~vqflows.VQFlow` seen as a :class:`torch.distributions.Distribution`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class VQFlowDistribution(torch.distributions.Distribution):
    """A fitted :class:`VQFlow` seen as a :class:`torch.distributions.Distribution` (``event_shape (D,)``).

    Example:
        >>> from vqflows import build
        >>> dist = build(2, "maf", charts=3).distribution()
        >>> dist.sample((4,)).shape, dist.log_prob(torch.zeros(5, 2)).shape
        (torch.Size([4, 2]), torch.Size([5]))
    """

    arg_constraints: dict = {}
    support = torch.distributions.constraints.real_vector
    has_rsample = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([model.features]), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if not isinstance(value, Tensor):
            try:
                value = torch.as_tensor(np.asarray(value))
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"value: expected a numeric array of shape (..., {self.model.features}), "
                                 f"got {type(value).__name__}") from e
        if value.dim() == 0 or value.shape[-1] != self.model.features:
            raise ValueError(f"value: expected shape (..., {self.model.features}), got {tuple(value.shape)}")
        shape = value.shape[:-1]
        return self.model.log_prob(value.reshape(-1, self.model.features)).reshape(shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.model.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.model.rsample(sample_shape)


__all__ = ["VQFlowDistribution"]
