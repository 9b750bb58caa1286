"""Chart maps: conditional normalizing flows ``p(x | c)`` behind one contract (:mod:`.base`)."""

from __future__ import annotations

from .base import FRAME_KINDS, ChartFlow, ConditionalDensity, StandardNormal
from .standard import ZUKO_FLOWS, ZukoFlow

#: Every base flow by name.
FLOWS = ("realnvp", "maf", "nsf", "cef", "sphere")


def build(name: str, features: int, context: int = 0, **options) -> ChartFlow:
    """Build the base flow called ``name`` on ``R^features`` with ``context`` context features.

    ``options`` go to the flow's constructor (``transforms``, ``hidden_features``, and for ``"cef"``
    ``manifold_dim``, ``alpha``, ``beta``). ``"sphere"`` is a CEF on the fixed unit sphere
    (stereographic charts; density w.r.t. its area measure).
    """
    from ..checks import one_of

    one_of(name, FLOWS, name="flow")
    if name == "cef":
        from .cef import CEF

        return CEF(features, context, **options)
    if name == "sphere":
        from .sphere import SphereCEF

        if features != 3:
            raise ValueError(f"features: expected 3 for flow 'sphere' (the unit sphere S² in R³), got {features}")
        options = {k: v for k, v in options.items() if k in ("transforms", "hidden_features")}
        # the projection point sits opposite u = 0 (the flow's axis), onto which rotation frames turn each chart
        return SphereCEF(1.0, context=context, pole="south", **options)
    options = {k: v for k, v in options.items() if k in ("transforms", "hidden_features")}
    return ZukoFlow(name, features, context, **options)


__all__ = ["ChartFlow", "ConditionalDensity", "StandardNormal", "FRAME_KINDS", "ZukoFlow", "ZUKO_FLOWS", "FLOWS", "build"]
