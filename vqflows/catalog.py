"""The built-in datasets' summaries (sizes and oracle ``E[log p]``), computed once and stored with the package.

``vqflows datasets`` and :func:`vqflows.datasets.info` with its default arguments read
``catalog.json`` beside this module instead of drawing every set and scoring its oracle on each
call; this module imports no torch. The file is made by ``python -m vqflows.catalog`` (rerun it
after adding or changing a built-in set); a test recomputes a row and compares.

Example:
    >>> rows = summaries()
    >>> [r["name"] for r in rows][:3]
    ['spherical', 'helix', 'lissajous']
    >>> rows[1]["features"], rows[1]["test"]
    (3, 2500)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Where the summaries are stored (package data; :func:`vqflows.datasets.info` reads them too).
FILE = Path(__file__).with_name("catalog.json")
#: The command that writes :data:`FILE`.
COMMAND = "python -m vqflows.catalog"


def stored() -> dict:
    """The stored file: ``{"command", "n", "seed", "splits", "rows"}``."""
    return json.loads(FILE.read_text())


def summaries() -> list[dict]:
    """One row per built-in dataset, as :func:`vqflows.datasets.info` computes it with its defaults."""
    return stored()["rows"]


def names() -> list[str]:
    """The built-in dataset names, in registration order."""
    return [row["name"] for row in summaries()]


def compute() -> dict:
    """The summaries recomputed (draws every set and scores its oracle: seconds, with torch)."""
    from .datasets import base  # deferred: imports torch; reading the stored summaries needs none

    rows = base.info(stored=False)
    return {"command": COMMAND, "n": base.N_POINTS, "seed": 0, "splits": list(base.SPLITS), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Write :data:`FILE` (``--check``: only compare with the stored file; exit 1 if they differ)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    data = compute()
    if "--check" in argv:
        same = data == stored()
        print("catalog.json is up to date" if same else "catalog.json differs: run " + COMMAND)
        return 0 if same else 1
    FILE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data['rows'])} dataset summaries to {FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
