"""The former home of the paper's experiments, kept for imports: everything now lives in :mod:`vqflows.experiments`.

``vqflows benchmark`` dispatches through :mod:`.cli` to :func:`vqflows.experiments.cli.main`.
"""

from __future__ import annotations

from ..experiments import *  # noqa: F403 - the same public names as before
from ..experiments import __all__  # noqa: F401
