"""``vqflows benchmark``: the paper's grid (:mod:`.paper`), or with ``--earth`` / ``--images`` those studies.

Each study parses its own options (``vqflows benchmark -h``, ``--earth -h``, ``--images digits -h``);
all share the runner's ``--jobs``, ``--scheduler``, ``--gpus-per-run`` and ``--quiet``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 if some runs failed, 2 on bad arguments, 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--earth" in argv:
        from .earth_cli import main as study  # deferred: each study imports only its own modules
    elif any(a == "--images" or a.startswith("--images=") for a in argv):
        from .images import main as study  # deferred: each study imports only its own modules
    else:
        from .paper import main as study  # deferred: each study imports only its own modules
    return study(argv)


if __name__ == "__main__":
    raise SystemExit(main())
