"""The checkpoint of a training: the state after a finished epoch, read back only into the same fit.

It is written after the first epoch, then at most every :data:`CHECKPOINT_SECONDS` seconds, after the
last epoch, and whenever the training ends otherwise (Ctrl-C, an error): then it holds the last finished
epoch, so only a hard kill (``SIGKILL``, a power cut) can lose finished epochs, at most that many
seconds of them. Writing after every epoch cost these small flows a noticeable share of a run: a MAF run
on the knot takes 0.92–0.95 of its time without it (``python benchmarks/epoch_costs.py 5 "train run"``).

A checkpoint holds tensors and plain data only, so that it is read with ``weights_only=True``
(unpickling anything else could run code), and a *fingerprint* of the fit that wrote it: the
settings, the SHA-256 of the training and validation points and of the model when training began.
A checkpoint written by another fit is refused with a one-line ``ValueError`` naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import io
from ..model import VQFlow
from .config import TrainConfig
from .history import History
from .state import LoopState

#: What a checkpoint holds: tensors and plain data only, so that it loads with ``weights_only=True``.
CHECKPOINT_KEYS = ("epoch", "done", "model", "best", "since_best", "optimizer", "scheduler", "logits", "generator",
                   "torch_rng", "history", "fingerprint")
#: The most seconds between two writes of a checkpoint (0: after every epoch); read when training starts.
CHECKPOINT_SECONDS = 10.0
#: Settings that do not change what a fit computes, left out of its fingerprint.
_NOT_FINGERPRINTED = ("device", "threads", "compile")


def digest(*parts: Any) -> str:
    """SHA-256 (hex) of tensors (dtype, shape and bytes), mappings of them (e.g. a ``state_dict``) and plain values."""
    h = hashlib.sha256()

    def feed(part: Any) -> None:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor {t.dtype} {tuple(part.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(part, Mapping):
            h.update(f"map {len(part)};".encode())
            for k, v in part.items():
                h.update(f"{k!r}:".encode())
                feed(v)
        else:
            h.update(f"{part!r};".encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


def fingerprint(config: TrainConfig, model: VQFlow, train: Tensor | Callable[[int], Tensor],
                val: Tensor | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings, the points and the model as it is now."""
    settings = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):  # the early-stopping rule, field by field: a refusal names the one that differs
            settings.update({f"{key}.{k}": v for k, v in value.items()})
        elif key not in _NOT_FINGERPRINTED:
            settings[key] = value
    settings["dtype"] = str(model.log_weights.dtype)
    points = digest(train) if isinstance(train, Tensor) else getattr(train, "__qualname__", type(train).__qualname__)
    return {"settings": settings, "train": points, "val": None if val is None else digest(val),
            "model": digest(model.state_dict())}


#: The entries of a checkpoint stored packed (:func:`pack`): state dicts of many small tensors.
PACKED = ("model", "best", "optimizer", "initial")


def pack(obj: Any) -> Any:
    """A nested structure of dicts, lists and tuples of tensors and plain values (a ``state_dict``, an
    optimizer's state) as ``{"packed": skeleton, "flat": {dtype: tensor}}``: the structure as one JSON
    string, each tensor replaced by its place in one flat tensor per dtype. ``torch.save`` pays per object,
    so a few long tensors and one string write several times faster than hundreds of small tensors in
    nested containers; the file still holds tensors and plain data only. :func:`unpack` gives the structure
    back, each tensor a copy. A structure holding other values than JSON's is returned as it is."""
    chunks: dict[str, list[Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, Tensor):
            t = x.detach().reshape(-1)
            key = str(x.dtype).removeprefix("torch.")
            offset = sizes.get(key, 0)
            chunks.setdefault(key, []).append(t.cpu())
            sizes[key] = offset + t.numel()
            return {"t": [key, offset, list(x.shape)]}
        if isinstance(x, Mapping):
            return {"d": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"l" if isinstance(x, list) else "u": [walk(v) for v in x]}
        return {"v": x}

    try:
        skeleton = json.dumps(walk(obj))
    except (TypeError, ValueError):
        return obj
    return {"packed": skeleton, "flat": {k: torch.cat(v) for k, v in chunks.items()}}


def unpack(packed: Any) -> Any:
    """The structure :func:`pack` stored, its tensors on the CPU."""
    flat = packed["flat"]

    def walk(node: dict) -> Any:
        (kind, x), = node.items()
        if kind == "t":
            key, offset, shape = x
            return flat[key][offset:offset + math.prod(shape)].reshape(shape).clone()
        if kind == "d":
            return {walk(k): walk(v) for k, v in x}
        if kind in ("l", "u"):
            items = [walk(v) for v in x]
            return items if kind == "l" else tuple(items)
        return x

    return walk(json.loads(packed["packed"]))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The training state in the checkpoint ``path`` (on the CPU), read with ``weights_only=True``.

    A file holding anything but tensors and plain data is refused unread (unpickling it could run
    code), as are empty, truncated or foreign files: each with a one-line ``ValueError``.
    """
    path = Path(path)
    again = f"remove {str(path)!r} to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ValueError(f"checkpoint: expected a checkpoint written by training, got an unreadable file "
                             f"{str(path)!r} (UnpicklingError); {again}") from None
        raise ValueError(f"checkpoint: expected tensors and plain data written by training, got {str(path)!r} "
                         f"holding other objects (refused unread: loading it could run code); {again}") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise ValueError(f"checkpoint: expected a checkpoint written by training, got an empty, truncated or "
                         f"unreadable file {str(path)!r} ({type(e).__name__}); {again}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint: expected a checkpoint written by training, got {str(path)!r} without "
                         f"{', '.join(missing)}; {again}")
    try:
        for key in PACKED:
            if isinstance(state.get(key), dict) and "packed" in state[key]:
                state[key] = unpack(state[key])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise ValueError(f"checkpoint: expected a checkpoint written by training, got {str(path)!r} with "
                         f"damaged state ({type(e).__name__}); {again}") from None
    return state


def check_fingerprint(path: Path, saved: Any, now: dict) -> None:
    """Refuse a checkpoint written by a fit with other settings, data or initial model than this one."""
    head = f"checkpoint: expected the checkpoint of this fit, got {str(path)!r}"
    tail = "; remove it to start over"
    if not isinstance(saved, dict):
        raise ValueError(f"{head} without a readable fingerprint{tail}")
    for key in dict.fromkeys([*now, *saved]):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            name = next(k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k))
            raise ValueError(f"{head} written with {name}={a.get(name)!r} where this fit has "
                             f"{name}={b.get(name)!r}{tail}")
        what = {"model": "another initial model", "train": "other training points",
                "val": "other validation points"}.get(key, f"another {key}")
        raise ValueError(f"{head} written for {what} (sha256 {str(a)[:12]}..., here {str(b)[:12]}...){tail}")


def _copied(x: Any) -> Any:
    """``x`` (nested dicts, lists and tuples) with a copy of each tensor in it."""
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, Mapping):
        return {k: _copied(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_copied(v) for v in x)
    return x


class Checkpoint:
    """The callback keeping the loop's whole state in ``path`` (atomically, on rank 0).

    It writes after the first epoch, then once ``every`` seconds (default :data:`CHECKPOINT_SECONDS`)
    have passed since the last write, after the last epoch, and, when the training ends otherwise
    (Ctrl-C, an error), the last finished epoch (held in memory since it was not written). A training
    that finds the file when it starts resumes from it (:func:`resume`) and ends as an uninterrupted run
    would have, bit for bit.
    """

    def __init__(self, path: Path, state: LoopState, fingerprint: dict[str, Any], every: float | None = None) -> None:
        self.path, self.state, self.fingerprint = Path(path), state, fingerprint
        self.every = CHECKPOINT_SECONDS if every is None else float(every)
        self.written: float | None = None  # when the last write ended
        self.pending: dict[str, Any] | None = None  # a finished epoch not written yet

    def __call__(self, epoch: int, model: VQFlow, history: History) -> None:
        s = self.state
        if not s.ranks.lead:
            return
        history.flow_seconds = time.perf_counter() - s.t1
        done = history.stopped_early or epoch == s.config.epochs
        if done or self.written is None or time.perf_counter() - self.written >= self.every:
            self._write(self._entries(epoch, done, model, history, hold=False))
            self.pending = None  # after the write: were it interrupted, the end writes the held epoch
        else:
            self.pending = self._entries(epoch, done, model, history, hold=True)

    def on_train_end(self, model: VQFlow, history: History) -> None:
        """An end before the last epoch (Ctrl-C, an error): the last finished epoch, if not yet written."""
        if self.pending is not None:
            entries, self.pending = self.pending, None
            self._write(entries)

    def _entries(self, epoch: int, done: bool, model: VQFlow, history: History, *, hold: bool) -> dict[str, Any]:
        """The checkpoint's entries now; ``hold``: for a later write, with copies of what training goes on
        changing in place (the other entries are new objects, or replaced rather than changed)."""
        s = self.state
        live = {"model": model.state_dict(), "optimizer": s.opt.state_dict(),
                "scheduler": s.sched.state_dict() if s.sched is not None else None,
                "logits": s.logits.detach() if s.logits is not None else None}
        if hold:  # a tenth of copy.deepcopy's time
            live = _copied(live)
        return {"epoch": epoch, "done": done, **live, "best": s.best, "since_best": s.since_best,
                "generator": s.gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history.to_dict(),
                "fingerprint": self.fingerprint, "initial": s.initial}

    def _write(self, entries: dict[str, Any]) -> None:
        packed = {k: pack(v) if k in PACKED and v is not None else v for k, v in entries.items()}
        io.save_torch(self.path, packed)
        self.written = time.perf_counter()


def resume(state: LoopState, path: Path, fingerprint: dict[str, Any]) -> None:
    """Load the checkpoint ``path`` into the loop's ``state``, which goes on after the saved epoch;
    a checkpoint of another fit (``fingerprint`` differs) is refused."""
    saved = read_checkpoint(path)
    check_fingerprint(path, saved["fingerprint"], fingerprint)
    state.model.load_state_dict(saved["model"])
    state.opt.load_state_dict(saved["optimizer"])
    state.sched_state = saved.get("scheduler")
    if state.logits is not None:
        state.logits.data.copy_(saved["logits"])
    state.gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    state.best, state.since_best = saved["best"], saved["since_best"]
    state.initial = saved.get("initial")  # epoch 0, where the end compares it on every validation point
    state.start = state.config.epochs + 1 if saved["done"] else saved["epoch"] + 1
    state.history = History.from_dict(saved["history"])
    state.history.resumed_at = saved["epoch"]


__all__ = ["Checkpoint", "resume", "read_checkpoint", "check_fingerprint", "fingerprint", "digest", "pack", "unpack",
           "CHECKPOINT_KEYS", "CHECKPOINT_SECONDS"]
