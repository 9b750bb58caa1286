"""The recipes behind the presets (:mod:`vqflows.presets`): :func:`build`, the general recipe, and
one function per named preset of a base flow (``maf``, ``vq-maf``, ...).

A recipe turns a few option names into the objects a :class:`~vqflows.VQFlow` is composed of (a
partition, a chart-map flow, frames) and records itself on the model (:attr:`VQFlow.spec`), so that
:meth:`VQFlow.save` writes it and :meth:`VQFlow.load` rebuilds the same model. The registry names
these functions by module, so it stays light and this module depends on it, not the other way.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from . import flows
from .charts import GaussianMixtureCharts, KMeansCharts, VQAutoencoder
from .checks import one_of, positive_int
from .model import VQFlow
from .presets import FLOWS, PARTITIONS, plain


def build(features: int, flow: str = "maf", charts: int | None = 32, *, partition: str = "vqae",
          latent: int = 3, m: int = 1, eps: float = 0.0, transforms: int = 5,
          hidden_features: Sequence[int] = (64, 64), vq_hidden: Sequence[int] = (64, 64),
          manifold_dim: int = 2, frames: bool = True, flow_options: dict[str, Any] | None = None) -> VQFlow:
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
    chart_map = flows.chart_flow(flow, features, 0 if part is None else part.latent, **options)
    if partition == "gmm" and part is not None:
        chart_map.zero_init()  # identity flow: the model starts as the fitted mixture
    model = VQFlow(chart_map, part, m=min(m, K), eps=eps, local_frames=frames)
    model.spec = {"preset": None, "args": plain(args)}
    return model


def _flow_preset(flow: str, vq: bool) -> Callable[..., VQFlow]:
    def make(features: int, charts: int | None = 32, **options: Any) -> VQFlow:
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


realnvp, vq_realnvp = _flow_preset("realnvp", vq=False), _flow_preset("realnvp", vq=True)
maf, vq_maf = _flow_preset("maf", vq=False), _flow_preset("maf", vq=True)
nsf, vq_nsf = _flow_preset("nsf", vq=False), _flow_preset("nsf", vq=True)
cef, vq_cef = _flow_preset("cef", vq=False), _flow_preset("cef", vq=True)
sphere, vq_sphere = _flow_preset("sphere", vq=False), _flow_preset("sphere", vq=True)

__all__ = ["build", "realnvp", "vq_realnvp", "maf", "vq_maf", "nsf", "vq_nsf", "cef", "vq_cef", "sphere", "vq_sphere"]
