"""Where and how a training runs: the device, torch's threads, and data-parallel ranks.

Data-parallel training is handled here and nowhere else. When ``torch.distributed`` is initialised
(e.g. under ``torchrun``), every rank runs the chart stage from the same seed and takes rank 0's
result (:meth:`Ranks.share_state`), each global batch is split across ranks the way
``DistributedSampler`` splits a permutation (rank ``r`` takes rows ``r::W``), the loss module is
wrapped in ``DistributedDataParallel``, and early stopping is decided on rank 0 and broadcast. A run
with W ranks and global batch B takes the same steps as one process with batch B.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..checks import device as check_device
from .config import check_threads


def interactive() -> bool:
    """Whether a person is likely watching this process: its stderr is a terminal, or it is a Jupyter kernel.

    This decides what ``progress=None`` (the default of :func:`~vqflows.fit` and :func:`~vqflows.train_flow`) does.
    """
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":  # a notebook's kernel
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def show_progress(progress: bool | None) -> bool:
    """``progress`` as given, or (``None``) whether a person is watching (:func:`interactive`)."""
    return interactive() if progress is None else bool(progress)


def resolve_device(device) -> torch.device:
    """The name or object ``device`` as a :class:`torch.device`; ``ValueError`` for a malformed name or a CUDA device that is not there."""
    return check_device(device, name="device")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (``None`` or 0: leave torch's setting), restoring it after."""
    if not check_threads(threads):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Ranks:
    """The data-parallel group this process belongs to: ``rank`` and ``world`` (``0`` and ``1`` alone)."""

    def __init__(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            self.rank, self.world = 0, 1

    @property
    def lead(self) -> bool:
        """Whether this process reports, checks and writes (rank 0)."""
        return self.rank == 0

    @torch.no_grad()
    def share_state(self, model: nn.Module) -> None:
        """Every rank takes rank 0's parameters and buffers."""
        if self.world > 1:
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, src=0)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under ``DistributedDataParallel`` when there are several ranks."""
        if self.world == 1:
            return module
        ddp = nn.parallel.DistributedDataParallel
        # buffers (frames, weights, codes) are equal on every rank after the chart stage: no per-step sync
        quiet = "forward_sync_buffers" in inspect.signature(ddp).parameters
        return ddp(module, **({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}))

    def batch_loss(self, step: Callable[[Tensor, Tensor], Tensor], x: Tensor, charts: Tensor,
                   idx: Tensor) -> Tensor:
        """The mean loss of the global batch ``idx``: this rank's share of its sum, scaled so that the
        gradients averaged over the ranks are those of the whole batch."""
        if self.world == 1:
            return step(x[idx], charts[idx]).mean()
        rows = idx[self.rank::self.world]
        return step(x[rows], charts[rows]).sum() * (self.world / idx.shape[0])

    def total(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over the ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t)

    def from_lead(self, values: tuple[float, ...], device: torch.device) -> tuple[float, ...]:
        """Rank 0's ``values`` on every rank."""
        if self.world == 1:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, src=0)
        return tuple(float(v) for v in t)


__all__ = ["resolve_device", "torch_threads", "interactive", "show_progress", "Ranks"]
