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
import inspect
from collections.abc import Callable, Sequence
from typing import Any

#: Base flows of the library by name.
FLOWS = ("realnvp", "maf", "nsf", "cef", "sphere")
#: The classical baselines (:mod:`vqflows.baselines`): model names of run configs, fitted without training.
BASELINES = ("gmm", "kde")
#: Partitioners by name.
PARTITIONS = ("vqae", "kmeans", "gmm")

_REGISTRY: dict[str, Callable[..., Any] | str] = {}


def register(name: str, recipe: Callable[..., Any] | str) -> None:
    """Register ``recipe`` (a callable returning a :class:`~vqflows.VQFlow`, or ``"module:function"``
    imported on first use) under ``name``; a name can be registered once."""
    if name in _REGISTRY:
        raise ValueError(f"name: expected a new preset name, got {name!r} (already registered)")
    _REGISTRY[name] = recipe


def names() -> list[str]:
    """Every preset name."""
    return list(_REGISTRY)


def recipe(name: str) -> Callable[..., Any]:
    """The recipe registered as ``name``."""
    from .checks import one_of

    one_of(name, _REGISTRY, name="preset")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry


def create(name: str, /, **args: Any):
    """The model of preset ``name`` built with ``args``; it remembers ``(name, args)`` for save/load."""
    fn = recipe(name)
    known = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in known.values()):
        for key in args:
            if key not in known:
                raise ValueError(f"{name}: expected arguments among {', '.join(known)}, got {key!r}")
    model = fn(**args)
    model.spec = {"preset": name, "args": _plain(args)}
    return model


def from_spec(spec: dict[str, Any]):
    """Rebuild a model from :attr:`VQFlow.spec` (``{"preset": name or None, "args": {...}}``)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict):
        raise ValueError(f"spec: expected {{'preset': ..., 'args': {{...}}}}, got {spec!r}")
    if spec.get("preset") is None:
        return build(**spec["args"])
    return create(spec["preset"], **spec["args"])


def _plain(value: Any) -> Any:
    """JSON-friendly copy: tuples become lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build(features: int, flow: str = "maf", charts: int | None = 32, *, partition: str = "vqae",
          latent: int = 3, m: int = 1, eps: float = 0.0, transforms: int = 5,
          hidden_features: Sequence[int] = (64, 64), vq_hidden: Sequence[int] = (64, 64),
          manifold_dim: int = 2, frames: bool = True, flow_options: dict[str, Any] | None = None):
    r"""A VQ-Flow on ``R^features`` from option names.

    Arguments:
        features: ``D``.
        flow: base flow, ``"realnvp"``, ``"maf"``, ``"nsf"``, ``"cef"`` (a learned d-manifold), or
            ``"sphere"`` (a CEF on the fixed unit sphere, for directional data; density w.r.t. area).
        charts: ``K``, or ``None`` for the plain flow (one global chart, no context).
        partition: ``"vqae"`` (VQ autoencoder), ``"kmeans"`` (k-means in data space) or ``"gmm"`` (a
            fitted Gaussian mixture, for ``realnvp``/``maf``/``nsf``: the charts, frames and weights are
            its components and the flow starts at the identity, so before training the model equals the mixture).
        latent: code dimension ``C`` of the VQ-AE (default 3: a 2-D code space cannot hold a sphere
            and folds long curves so that one code cell catches pieces of several turns).
        m, eps: membership — the ``m`` nearest codes, enlarged by ``ε`` (``m=1, ε=0``: hard boundary).
        transforms, hidden_features: size of the flow; ``vq_hidden``: widths of the VQ-AE.
        manifold_dim: ``d`` for ``flow="cef"``.
        frames: whether each chart gets its own fitted frame (else one global frame for all).
        flow_options: further keyword arguments for the flow (e.g. CEF's ``alpha``, ``beta``).

    Example:
        >>> model = build(3, "maf", charts=8)
        >>> model.K, model.spec["preset"] is None
        (8, True)
    """
    import math

    from . import flows
    from .charts import GaussianMixtureCharts, KMeansCharts, VQAutoencoder
    from .checks import one_of, positive_int
    from .model import VQFlow

    positive_int(features, name="features")
    one_of(flow, FLOWS, name="flow")
    one_of(partition, PARTITIONS, name="partition")
    if charts is not None:
        positive_int(charts, name="charts")
        positive_int(m, name="m")
        if m > charts:
            raise ValueError(f"m: expected at most charts={charts}, got {m}")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    if partition == "gmm" and charts not in (None, 1) and flow not in ("realnvp", "maf", "nsf"):
        raise ValueError(f"partition: expected 'vqae' or 'kmeans' for flow={flow!r} ('gmm' needs a "
                         f"full-dimensional flow: realnvp, maf or nsf), got 'gmm'")
    if flow == "cef" and not 1 <= manifold_dim < features:
        raise ValueError(f"manifold_dim: expected 1 <= d < features={features}, got {manifold_dim}")
    args = dict(features=features, flow=flow, charts=charts, partition=partition, latent=latent, m=m,
                eps=float(eps), transforms=transforms, hidden_features=list(hidden_features),
                vq_hidden=list(vq_hidden), manifold_dim=manifold_dim, frames=frames,
                flow_options=dict(flow_options or {}))
    K = charts or 1
    if K == 1:  # one chart needs no partition: the plain flow
        part = None
    elif partition == "vqae":
        part = VQAutoencoder(features, charts, latent, hidden=tuple(vq_hidden))
    elif partition == "gmm":
        part = GaussianMixtureCharts(features, charts)
    else:
        part = KMeansCharts(features, charts)
    if flow_options is not None and not isinstance(flow_options, dict):
        raise ValueError(f"flow_options: expected a dict of options or None, got {flow_options!r}")
    own = ("transforms", "hidden_features", "manifold_dim")  # arguments of build itself
    accepted = [key for key in flows.FLOW_OPTIONS[flow] if key not in own]
    unknown = [key for key in (flow_options or {}) if key not in accepted]
    if unknown:
        raise ValueError(f"flow_options: expected options of flow {flow!r} among {', '.join(accepted) or '(none)'}, "
                         f"got {', '.join(map(repr, unknown))}"
                         + (f" (set {unknown[0]} itself, not in flow_options)" if unknown[0] in own else ""))
    options = dict(transforms=transforms, hidden_features=tuple(hidden_features), **(flow_options or {}))
    if flow == "cef":
        options["manifold_dim"] = manifold_dim
    chart_flow = flows.build(flow, features, 0 if part is None else part.latent, **options)
    if partition == "gmm" and part is not None:
        chart_flow.zero_init()  # identity flow: the model starts as the fitted mixture
    model = VQFlow(chart_flow, part, m=min(m, K), eps=eps, local_frames=frames)
    model.spec = {"preset": None, "args": _plain(args)}
    return model


def _flow_preset(flow: str, vq: bool) -> Callable[..., Any]:
    def make(features: int, charts: int | None = 32, **options: Any):
        known = inspect.signature(build).parameters
        for key in options:
            if key not in known or key in ("flow", "charts", "features"):
                raise ValueError(f"{make.__name__}: expected options among "
                                 f"{', '.join(k for k in known if k not in ('flow', 'charts', 'features'))}, got {key!r}")
        if not vq:
            charts = None
        elif flow == "cef":
            # an embedding flow's chart surface must reach past its cell to meet its neighbours'
            options.setdefault("m", 2)
        return build(features, flow, charts, **options)

    make.__name__ = ("vq-" if vq else "") + flow
    make.__doc__ = f"{'VQ-' if vq else 'plain '}{flow}: :func:`build` with ``flow={flow!r}``" + (
        "." if vq else " and no charts.")
    return make


for _flow in FLOWS:
    register(_flow, _flow_preset(_flow, vq=False))
    register(f"vq-{_flow}", _flow_preset(_flow, vq=True))
for _flow in ("realnvp", "maf"):
    register(f"image-{_flow}", "vqflows.images.models:image_" + _flow)
    register(f"image-vq-{_flow}", "vqflows.images.models:image_vq_" + _flow)

__all__ = ["BASELINES", "FLOWS", "PARTITIONS", "build", "create", "from_spec", "names", "recipe", "register"]
