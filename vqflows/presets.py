"""Named recipes for VQ-Flows: the one registry of the model names the command line and studies use.

A model is composed from objects (:class:`~vqflows.VQFlow` takes a partition, a chart-map flow and
frames); a *recipe* turns a few options into those objects. :func:`build` is the general recipe
(``flow``, ``charts``, ``partition``, ...); a *preset* is a registered recipe with a name —
``"maf"``, ``"vq-maf"``, ``"vq-sphere"``, ``"image-vq-maf"``, ... Every model made by a recipe
remembers it (:attr:`VQFlow.spec`), so :meth:`VQFlow.save` writes the recipe and its arguments and
:meth:`VQFlow.load` rebuilds the same model before loading its weights.

The module imports nothing heavy, so that the command line can list the names at once.

Example:
    >>> model = create("vq-maf", features=3, charts=8)
    >>> model.spec["preset"], model.spec["args"]["charts"]
    ('vq-maf', 8)
    >>> sorted(names())[:3]
    ['cef', 'image-maf', 'image-realnvp']
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any

from .checks import one_of

#: Base flows of the library by name.
FLOWS = ("realnvp", "maf", "nsf", "cef", "sphere")
#: The classical baselines (:mod:`vqflows.baselines`): model names of run configs, fitted without training.
BASELINES = ("gmm", "kde")
#: Partitioners by name.
PARTITIONS = ("vqae", "kmeans", "gmm")

#: The entry-point group through which a package adds presets (``name = "module:function"`` under
#: ``[project.entry-points."vqflows.presets"]`` in its ``pyproject.toml``); the image study registers its
#: models this way, so the registry names no study.
ENTRY_POINTS = "vqflows.presets"

_REGISTRY: dict[str, Callable[..., Any] | str] = {}
_PLUGINS_READ = False


def _read_plugins() -> None:
    """Add the presets of installed packages' entry points (once; a name registered here wins)."""
    global _PLUGINS_READ
    if _PLUGINS_READ:
        return
    _PLUGINS_READ = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        _REGISTRY.setdefault(point.name, point.value)


def register(name: str, recipe: Callable[..., Any] | str) -> None:
    """Register ``recipe`` (a callable returning a :class:`~vqflows.VQFlow`, or ``"module:function"``
    imported on first use) under ``name``; a name can be registered once."""
    _read_plugins()
    if name in _REGISTRY:
        raise ValueError(f"name: expected a new preset name, got {name!r} (already registered)")
    _REGISTRY[name] = recipe


def names() -> list[str]:
    """Every preset name."""
    _read_plugins()
    return list(_REGISTRY)


def recipe(name: str) -> Callable[..., Any]:
    """The recipe registered as ``name``."""
    _read_plugins()
    one_of(name, _REGISTRY, name="preset")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        entry = _REGISTRY[name] = _resolve(entry)
    return entry


def _resolve(entry: str) -> Callable[..., Any]:
    """The function named ``"module:function"``, its module imported now (a registry that names its
    recipes by module keeps the command line's listing light and depends on none of them)."""
    module, attr = entry.split(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, /, **args: Any):
    """The model of preset ``name`` built with ``args``; it remembers ``(name, args)`` for save/load."""
    fn = recipe(name)
    known = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in known.values()):
        for key in args:
            if key not in known:
                raise ValueError(f"{name}: expected arguments among {', '.join(known)}, got {key!r}")
    model = fn(**args)
    model.spec = {"preset": name, "args": plain(args)}
    return model


def from_spec(spec: dict[str, Any]):
    """Rebuild a model from :attr:`VQFlow.spec` (``{"preset": name or None, "args": {...}}``)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict):
        raise ValueError(f"spec: expected {{'preset': ..., 'args': {{...}}}}, got {spec!r}")
    if spec.get("preset") is None:
        return _resolve(GENERAL)(**spec["args"])
    return create(spec["preset"], **spec["args"])


def plain(value: Any) -> Any:
    """JSON-friendly copy of a recipe's arguments: tuples become lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


#: the general recipe, which rebuilds a model made by :func:`vqflows.build` (``spec["preset"] is None``)
GENERAL = "vqflows.recipes:build"

for _flow in FLOWS:
    _REGISTRY[_flow] = f"vqflows.recipes:{_flow}"
    _REGISTRY[f"vq-{_flow}"] = f"vqflows.recipes:vq_{_flow}"

__all__ = ["BASELINES", "ENTRY_POINTS", "FLOWS", "PARTITIONS", "GENERAL", "create", "from_spec", "names", "plain", "recipe", "register"]
