"""The documentation site builds without a warning, names every public name, and its examples run."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vqflows
from vqflows import presets, recipes, runs, selection, training
from vqflows import sklearn as vqsklearn
from vqflows.datasets import base, files
from vqflows.model import VQFlow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="the site needs the docs tools: pip install -e '.[docs]' (the [test] extra has them too)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in log, log[-4000:]
    return out


@needs_mkdocs
def test_the_site_has_the_guides_and_the_api_reference(site):
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s*([\w/-]+\.md)$|^\s*-\s*([\w/-]+\.md)$", nav, re.M)
    pages = [a or b for a, b in pages]
    assert len(pages) >= 8
    for page in pages:
        html = site / (page.removesuffix(".md").removesuffix("index") + "/index.html").lstrip("/")
        if page == "index.md":
            html = site / "index.html"
        assert html.exists(), page
    for guide in ("getting-started", "guide/your-data", "guide/sphere", "guide/images", "guide/scaling",
                  "how-it-works", "results", "robustness", "changelog"):
        assert f"{guide}.md" in pages, guide
    api = "".join(p.read_text() for p in (site / "api").rglob("index.html"))
    for name in ("vqflows.model.VQFlow", "vqflows.training.fitting.fit", "vqflows.training.loop.train_flow",
                 "vqflows.training.config.EarlyStopping", "vqflows.training.config.TrainConfig", "vqflows.sklearn.VQFlowDensity", "vqflows.config.RunConfig"):
        assert f'id="{name}"' in api, name
    for name in vqflows.__all__:  # every top-level name is documented where it is defined
        obj = getattr(vqflows, name)
        where = obj.__name__ if inspect.ismodule(obj) else f"{obj.__module__}.{name}" if hasattr(obj, "__module__") \
            else None
        if where is not None and not isinstance(obj, tuple):
            assert f'id="{where}"' in api, where
    how = (site / "how-it-works" / "index.html").read_text()
    assert how.count("<img") >= 4 and all((site / "figures" / f).exists() for f in
                                          re.findall(r'src="\.\./figures/([^"]+)"', how))


def test_the_roles_extension_writes_markdown():
    spec = importlib.util.spec_from_file_location("griffe_roles", DOCS / "griffe_roles.py")
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("the docs tools are not installed: pip install -e '.[docs]'")
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = roles.markdown("See :class:`~vqflows.model.VQFlow` and :func:`fit`.\n\n.. math:: a = b\n\n>>> 1 + 1\n2\n")
    assert "`VQFlow`" in text and "`fit`" in text and ":class:" not in text
    assert "```text\na = b\n```" in text and "```pycon\n>>> 1 + 1\n2\n```" in text


# ------------------------------------------------------------------ the docstrings of the core API

def _core() -> dict[str, object]:
    targets = {f"vqflows.{name}": getattr(vqflows, name) for name in vqflows.__all__
               if callable(getattr(vqflows, name)) and not inspect.ismodule(getattr(vqflows, name))}
    targets["VQFlowDensity"] = vqsklearn.VQFlowDensity
    for name, fn in inspect.getmembers(VQFlow, inspect.isfunction):
        if not name.startswith("_") and fn.__qualname__.startswith("VQFlow."):
            targets[f"VQFlow.{name}"] = fn
    targets.update({"datasets.load": files.load, "datasets.read_points": files.read_points, "datasets.get": base.get,
                    "datasets.info": base.info, "datasets.split": base.split, "recipes.build": recipes.build,
                    "presets.create": presets.create})
    return targets


def test_every_parameter_of_the_core_api_is_documented():
    missing = []
    for label, obj in _core().items():
        doc = (inspect.getdoc(obj) or "") + (("\n" + (inspect.getdoc(obj.__init__) or "")) if isinstance(obj, type)
                                             else "")
        if not doc.strip():
            missing.append(f"{label}: no docstring")
            continue
        try:
            parameters = inspect.signature(obj).parameters
        except ValueError:  # an exception class: no parameters of its own
            parameters = {}
        for name in parameters:
            if name in ("self", "cls", "args", "kwargs") or name.startswith("_"):
                continue
            if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", doc):
                missing.append(f"{label}({name})")
    assert not missing, "undocumented: " + ", ".join(missing)


# ------------------------------------------------------------------ the site's examples run

#: per page, the changes that shrink its examples to a test's budget (each must still be found)
SHRINK = {
    "index.md": {"n=10_000": "n=400", "charts=32": "charts=4"},
    "getting-started.md": {"n=10_000": "n=400", "charts=32": "charts=4"},
    "guide/your-data.md": {"charts=32": "charts=4", '{"charts": [8, 16, 32]}, cv=3': '{"charts": [2, 4]}, cv=2',
                           "candidates=(8, 16, 32)": "candidates=(2, 4)"},
    "guide/sphere.md": {},
    "guide/images.md": {},
}


def _tiny_fit(monkeypatch) -> None:
    """Every fit runs one epoch of each stage (the examples are written at the defaults a user gets)."""
    real = training.fit

    def fit(model, train, val=None, **options):
        return real(model, train, val, **{**options, "epochs": 1, "chart_epochs": 1})

    for module in (training, vqsklearn, selection, runs):
        monkeypatch.setattr(module, "fit", fit)
    monkeypatch.setattr(vqflows, "fit", fit, raising=False)


@pytest.mark.parametrize("page", sorted(SHRINK))
def test_the_examples_of_the_site_run(page, tmp_path, monkeypatch):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks, page
    code = "\n".join(blocks)
    for old, new in SHRINK[page].items():
        assert old in code, f"{page}: example changed, {old!r} not found"
        code = code.replace(old, new)
    _tiny_fit(monkeypatch)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOCS / page), "exec"), {"__name__": "__docs__"})
