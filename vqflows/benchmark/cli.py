"""``vqflows benchmark``: see :mod:`vqflows.experiments.cli` (the studies live in :mod:`vqflows.experiments`)."""

from __future__ import annotations

from ..experiments.cli import main
from ..experiments.paper import build_parser

__all__ = ["build_parser", "main"]
