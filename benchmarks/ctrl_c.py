"""Ctrl-C during the chart stage, many times over: how often ``python -m vqflows train`` exits with 130.

    python benchmarks/ctrl_c.py 30          # 30 launches, SIGINT 1 s after config.json appears

The robustness table's row 8 (docs/robustness.md) runs this once; a Ctrl-C lands in a different place
each time (an import, a weak-reference callback, scikit-learn's EM), so the rare failures need many
launches. Prints each launch that did not exit with 130 (its stderr) and then every exit code.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(launches: int, delay: float = 1.0) -> list[int]:
    codes = []
    root = Path(tempfile.mkdtemp(prefix="vqflows-ctrl-c-"))
    try:
        for i in range(launches):
            out = root / f"run{i}"
            args = [sys.executable, "-m", "vqflows", "train", "--dataset", "helix", "--out", str(out), "--epochs", "2",
                    "--quiet", "--set", "n=20000", "chart_epochs=200", "hidden=16", "transforms=2"]
            # Ctrl-C's default in the child, as in a terminal (a shell's background job starts with it ignored)
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            t0 = time.time()
            while not (out / "config.json").exists() and p.poll() is None and time.time() - t0 < 120:
                time.sleep(0.02)
            time.sleep(delay)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=300)
            codes.append(p.returncode)
            if p.returncode != 130:
                print(f"launch {i}: exit {p.returncode} after {time.time() - t0:.1f} s; stderr: {err[-2000:]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{codes.count(130)} of {launches} launches exited with 130: {codes}")
    return codes


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30, float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
