"""Saving and loading models: a folder with the recipe (``config.json``) and the weights (``weights.pt``).

A model made by a recipe (:mod:`vqflows.presets`) remembers it in :attr:`~vqflows.VQFlow.spec`;
:func:`save` writes the recipe and its arguments, :func:`load` rebuilds the same model from the
registry and loads its weights (read with ``weights_only=True``). :meth:`VQFlow.save` and
:meth:`VQFlow.load` call these.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import presets
from .checks import device as check_device
from .io import save_torch, write_json


def save(model: Any, path: str | os.PathLike) -> Path:
    """Write ``model``'s recipe and weights into the folder ``path`` (see :meth:`VQFlow.save`)."""
    if model.spec is None:
        raise ValueError("model: expected one built by vqflows.build or vqflows.presets.create (whose recipe "
                         "can be saved), got one composed by hand; save its state_dict() instead")
    path = folder(path)
    write_json(path / "config.json", {"format": 2, **model.spec})
    save_torch(path / "weights.pt", model.state_dict())
    for old in path.glob("member-*"):  # an ensemble saved here before: the folder now holds this model alone
        shutil.rmtree(old, ignore_errors=True)
    return path


def folder(path: str | os.PathLike) -> Path:
    """The folder ``path`` to save a model into, made if missing; ``ValueError`` for a file or an empty path."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"path: expected a folder to save into, got {path!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path: expected a folder to save into, got the file {str(path)!r}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Any:
    """The model saved in ``path`` (see :meth:`VQFlow.load`)."""
    if isinstance(map_location, (str, torch.device)):
        map_location = check_device(map_location, name="map_location")
    path = Path(path)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if (path / "member-0" / "config.json").exists():
        raise ValueError(f"path: expected one VQFlow's folder, got an ensemble's (member-0/, ...) in {str(path)!r}: "
                         f"load it with vqflows.load(path)")
    if not (path / "config.json").exists() or not (path / "weights.pt").exists():
        raise ValueError(f"path: expected a folder with config.json and weights.pt, got {str(path)!r}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config.json: expected a JSON model recipe, got unreadable text in {str(path)!r}") from e
    if not isinstance(config, dict):
        raise ValueError(f"config.json: expected a JSON object, got {type(config).__name__}")
    spec = config if config.get("format") == 2 else {"preset": None, "args": config}  # the flat layout of 0.1
    try:
        model = presets.from_spec({"preset": spec.get("preset"), "args": spec.get("args")})
    except TypeError as e:
        raise ValueError(f"config.json: expected the arguments of its recipe, got {e}") from e
    try:
        state = torch.load(path / "weights.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several kinds for empty, truncated or foreign files
        raise ValueError(f"weights.pt: expected a state_dict saved by vqflows, got an unreadable file in "
                         f"{str(path)!r} ({type(e).__name__})") from e
    floats = [t.dtype for t in state.values() if isinstance(t, Tensor) and t.is_floating_point()]
    if floats:  # the model comes back in the dtype it was saved in
        model.to(floats[0])
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"weights.pt: expected weights matching config.json, got a mismatch in {str(path)!r}") from e
    return model.to(map_location).eval()


__all__ = ["folder", "load", "save"]
