"""The README's Python snippet runs (on a tiny budget) and its commands match the CI script."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_api_snippet_runs(tmp_path, monkeypatch):
    (block,) = _python_blocks()
    shrink = {"n=10_000": "n=400", "charts=32": "charts=4",
              "vqflows.fit(model, splits.train, splits.val)": "vqflows.fit(model, splits.train, splits.val, epochs=2, chart_epochs=2)",
              "model.sample(10_000)": "model.sample(100)"}
    for old, new in shrink.items():
        assert old in block, f"README snippet changed: {old!r} not found"
        block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert (tmp_path / "run" / "weights.pt").exists()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"```bash\n(pip install [^\n]*pytest[^\n]*)\n```", readme).group(1)
    assert command in ci
