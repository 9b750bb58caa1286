"""Chart maps: conditional normalizing flows ``p(x | c)`` behind one contract (:mod:`.base`)."""

from __future__ import annotations

from ..checks import one_of
from .base import FRAME_KINDS, ChartFlow, StandardNormal
from .cef import CEF
from .sphere import SphereCEF
from .standard import ZUKO_FLOWS, ZukoFlow

#: Every base flow by name.
FLOWS = ("realnvp", "maf", "nsf", "cef", "sphere")
#: The options each flow takes (beyond ``features`` and ``context``); zuko's flows take theirs as zuko names them.
FLOW_OPTIONS = {
    "realnvp": ("transforms", "hidden_features", "randmask"),
    "maf": ("transforms", "hidden_features", "randperm", "passes"),
    "nsf": ("transforms", "hidden_features", "bins", "slope", "randperm", "passes"),
    "cef": ("transforms", "hidden_features", "manifold_dim", "alpha", "beta"),
    "sphere": ("transforms", "hidden_features"),
}


def chart_flow(name: str, features: int, context: int = 0, **options) -> ChartFlow:
    """The chart-map flow called ``name`` on ``R^features`` with ``context`` context features.

    ``options`` go to the flow's constructor; :data:`FLOW_OPTIONS` lists those each flow takes
    (``transforms``, ``hidden_features``, for ``"cef"`` ``manifold_dim``, ``alpha``, ``beta``, and zuko's
    own for RealNVP, MAF and NSF); any other option raises ``ValueError`` naming them.
    ``"sphere"`` is a CEF on the fixed unit sphere (stereographic charts; density w.r.t. its area measure).
    """
    one_of(name, FLOWS, name="flow")
    unknown = [key for key in options if key not in FLOW_OPTIONS[name]]
    if unknown:
        raise ValueError(f"flow_options: expected options of flow {name!r} among {', '.join(FLOW_OPTIONS[name])}, "
                         f"got {', '.join(map(repr, unknown))}")
    if name == "cef":
        return CEF(features, context, **options)
    if name == "sphere":
        if features != 3:
            raise ValueError(f"features: expected 3 for flow 'sphere' (the unit sphere S² in R³), got {features}")
        # the projection point sits opposite u = 0 (the flow's axis), onto which rotation frames turn each chart
        return SphereCEF(1.0, context=context, pole="south", **options)
    try:
        return ZukoFlow(name, features, context, **options)
    except (TypeError, ValueError, RuntimeError) as e:  # zuko's own checks of its options
        raise ValueError(f"flow_options: expected valid options of flow {name!r}, got {options!r} ({e})") from None


__all__ = ["ChartFlow", "StandardNormal", "FRAME_KINDS", "ZukoFlow", "ZUKO_FLOWS", "FLOWS", "FLOW_OPTIONS", "chart_flow"]
