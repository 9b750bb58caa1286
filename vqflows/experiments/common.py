"""Small pieces every study's command line shares: comma-separated lists, the invocation log, durations."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import read_json, write_json


def comma_list(text: str | None, name: str, check: Callable[[str], Any] | None = None) -> list[str]:
    """The distinct items of ``"a,b,c"`` in order, each passed through ``check``; ``None`` gives ``[]``.

    An empty list (``","``) raises ``ValueError``.
    """
    if text is None:
        return []
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}")
    for item in items:
        if check is not None:
            check(item)
    return list(dict.fromkeys(items))


def log_invocation(path: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``entry`` to the JSON list in ``path`` and return every entry so far.

    A study resumed over several invocations is timed by their sum; the runs an invocation reused
    were timed by the one that made them.
    """
    past = read_json(path, [])
    past = (past if isinstance(past, list) else []) + [entry]
    write_json(path, past)
    return past


def command(argv: Sequence[str]) -> str:
    """The shell command ``vqflows benchmark ARGV...``, quoted."""
    return shlex.join(["vqflows", "benchmark", *argv])


def duration(seconds: float) -> str:
    """``"1 h 05 min"``, ``"3 min 07 s"`` or ``"42 s"``."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")
