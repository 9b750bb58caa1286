"""The README's Python snippet runs (on a tiny budget) and its commands match the CI script."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_api_snippet_runs(tmp_path, monkeypatch):
    block = _python_blocks()[0]
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

    # the scikit-learn example runs in the same scope (on a tiny budget)
    sklearn_block = _python_blocks()[1]
    assert "GridSearchCV" in sklearn_block
    sklearn_block = sklearn_block.replace("VQFlowDensity(epochs=20)", "VQFlowDensity(epochs=1, chart_epochs=1)")
    sklearn_block = sklearn_block.replace('{"charts": [8, 16, 32]}, cv=3', '{"charts": [2, 4]}, cv=2')
    exec(compile(sklearn_block, "README.md", "exec"), scope)
    assert scope["search"].best_params_["charts"] in (2, 4)


def test_readme_results_match_the_results_page():
    """The table at a glance copies Table 1 of docs/results.md (the command beside both made it)."""
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "docs" / "results.md").read_text()
    for model in ("RealNVP", "VQ-RealNVP", "MAF", "VQ-MAF (default)", "GMM", "KDE"):
        row = re.search(rf"^\| {re.escape(model)} \|(.*)\|$", readme, re.M).group(1)
        numbers = re.findall(r"[−-]?\d+\.\d+ ± \d+\.\d+", row)
        assert len(numbers) == 6, row
        for number in numbers:
            assert number.replace("−", "-") in results, (model, number)
    header = re.search(r"^\| model \|(.*)\|$", readme, re.M).group(1)
    import vqflows.catalog

    for name in (c.strip() for c in header.split("|")):  # the command line's dataset names
        assert name in vqflows.catalog.names(), name


def test_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs)/[^)#]*)\)", readme):
        assert (ROOT / target).exists(), target


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"```bash\n(pip install [^\n]*pytest[^\n]*)\n```", readme).group(1)
    assert command in ci
