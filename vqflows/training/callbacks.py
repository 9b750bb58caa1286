"""What runs after every epoch: the user's callbacks, the progress bar and the checkpoint.

A callback is called after every epoch as ``callback(epoch, model, history)``; an object may also
have ``on_train_begin(model, history)`` (called when training starts from epoch 1) and
``on_train_end(model, history)`` (called when the loop ends, however it ends). The progress bar
(:class:`ProgressBar`) and the checkpoint (:class:`~.checkpoint.Checkpoint`) are callbacks of this kind.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm

from ..model import VQFlow
from .history import History

#: A callback after every epoch, ``callback(epoch, model, history)``.
Callback = Callable[[int, VQFlow, History], None]


def bar(total: int, desc: str, start: int = 0) -> tqdm:
    """A progress bar of ``total`` steps, ``start`` of them done."""
    out = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    if start:
        out.update(start)
    return out


class ProgressBar:
    """A bar over the flow epochs with the last loss, the best epoch and the last validation score."""

    def __init__(self, epochs: int, start: int = 1) -> None:
        self.bar = bar(epochs, "flow", start - 1)

    def __call__(self, epoch: int, model: VQFlow, history: History) -> None:
        self.bar.update(1)
        val = {"val": f"{history.val_log_likelihood[-1]:.3f}"} if history.val_log_likelihood else {}
        self.bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", best=history.best_epoch, **val)

    def on_train_end(self, model: VQFlow, history: History) -> None:
        self.bar.close()


__all__ = ["Callback", "ProgressBar", "bar"]
