r"""Densities on a known sphere :math:`S^2(r, m)` through a fixed inverse stereographic projection.

The projection from the north pole of the sphere of radius ``r`` centred at ``m`` is

.. math:: x = m + r \left( \frac{2 u}{1 + \|u\|^2}, \frac{\|u\|^2 - 1}{1 + \|u\|^2} \right),
          \qquad \lambda(u) = \frac{2 r}{1 + \|u\|^2},

that is :math:`x = m + r R\, \sigma^{-1}(u)` with :math:`\sigma^{-1}` the unit-sphere map
:func:`vqflows.geometry.inverse_stereographic` (from the same pole). It is built from conformal layers, so that it is an
embedding like any other CEF's: zero padding, the special conformal map with :math:`b = -e_3`
(which bends the plane into the sphere of radius 1/2 through the origin, see
:class:`~.conformal.SpecialConformal`), a rotation ``R`` and the scale-shift
:math:`y \mapsto 2 r y + m + r R b`. The pole named by ``pole`` is the projection point, the image
of infinity; ``u = 0`` lands on the opposite pole. A density :math:`q` on the plane becomes the density
:math:`q(u) \lambda(u)^{-2}` w.r.t. area on the sphere.

With ``pole="south"`` and ``rotation=rotation_to(d)`` (:func:`vqflows.geometry.rotation_to`,
``R e_3 = d``), ``u = 0`` lands at ``m + r d`` and the projection point is the antipode, so a chart
centred in direction ``d`` keeps its singularity as far from it as possible.

Letters: N points, C context features.
"""

from __future__ import annotations

__all__ = ["SphereCEF", "VMFChartFlow", "rotation_to", "sphere_quadrature", "stereographic_embedding"]

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import zuko
from torch import Tensor

from ..checks import SPHERE_TOLERANCE, one_of, positive_int
from ..geometry import rotation_to
from .base import ChartFlow, StandardNormal
from .cef import CEF
from .conformal import ConformalEmbedding, Orthogonal, ScaleShift, SpecialConformal, ZeroPad


def _vector3(value, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, Tensor) else value)
    t = t.to(torch.float64)
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected 3 finite numbers, got shape {tuple(t.shape)}")
    return t


def _radius(radius: float) -> float:
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a finite number > 0, got {radius!r}")
    return float(radius)


def stereographic_embedding(radius: float = 1.0, centre=None, *, pole: str = "north",
                            rotation=None) -> ConformalEmbedding:
    r"""The fixed (frozen) inverse stereographic projection :math:`\mathbb{R}^2 \to S^2(r, m)`.

    Arguments:
        radius: the sphere's radius ``r``.
        centre: its centre ``m``, shape ``(3,)`` (default the origin).
        pole: ``"north"`` or ``"south"``: the projection point is ``m + r R e_3`` or ``m - r R e_3``.
        rotation: ``R``, an orthogonal ``(3, 3)`` matrix (default the identity).

    Example:
        >>> emb = stereographic_embedding(2.0)
        >>> emb(torch.zeros(1, 2))  # u = 0 lands on the pole opposite the projection point
        tensor([[ 0.,  0., -2.]])
    """
    radius = _radius(radius)
    centre = torch.zeros(3, dtype=torch.float64) if centre is None else _vector3(centre, "centre")
    sign = {"north": -1.0, "south": 1.0}[one_of(pole, ("north", "south"), name="pole")]
    rotation = torch.eye(3, dtype=torch.float64) if rotation is None else torch.as_tensor(rotation, dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, sign], dtype=torch.float64)
    embedding = ConformalEmbedding([
        ZeroPad(2, 3),
        SpecialConformal(3, b=b),
        Orthogonal(3, init=rotation),
        ScaleShift(3, log_scale=math.log(2 * radius), shift=centre + radius * rotation @ b),
    ])
    embedding.requires_grad_(False)
    return embedding


class SphereCEF(CEF):
    r"""A conditional 2-D RealNVP carried onto a known sphere by :func:`stereographic_embedding`.

    Its :meth:`log_prob` is a density w.r.t. the area measure of :math:`S^2(r, m)`. Points are first
    projected radially onto the sphere, :math:`x \mapsto m + r (x - m)/\|x - m\|`, so that
    :meth:`inverse` is the nearest-point projection and :meth:`reconstruction` the squared distance
    to the sphere. The embedding has no trainable parameters, so ``beta`` is 0.

    Arguments:
        radius: the sphere's radius ``r``.
        centre: its centre ``m``, shape ``(3,)``.
        context: the context dimension ``C``.
        pole: which pole, ``"north"`` or ``"south"``, is the projection point (in the rotated frame).
        rotation: an orthogonal ``(3, 3)`` matrix ``R`` applied to the sphere; see :func:`rotation_to`.
        transforms: the number of RealNVP coupling layers.
        hidden_features: the widths of each coupling layer's network.

    Example:
        >>> flow = SphereCEF(context=2, pole="south", rotation=rotation_to([1.0, 0.0, 0.0]))
        >>> x = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
        >>> flow.log_prob(x, torch.randn(4, 2)).shape
        torch.Size([4])
    """

    frame = "rotation"

    def __init__(self, radius: float = 1.0, centre=None, *, context: int = 0, pole: str = "north",
                 rotation=None, transforms: int = 5, hidden_features: Sequence[int] = (64, 64)) -> None:
        embedding = stereographic_embedding(radius, centre, pole=pole, rotation=rotation)
        super().__init__(3, context, 2, transforms, hidden_features, alpha=1.0, beta=0.0, embedding=embedding)
        self.radius = _radius(radius)
        rot = torch.eye(3, dtype=torch.float64) if rotation is None else torch.as_tensor(rotation, dtype=torch.float64)
        #: where ``u = 0`` lands, seen from the centre: rotation frames turn each chart's centre onto it
        self.axis = rot[:, 2] * (1.0 if pole == "south" else -1.0)
        self.register_buffer("centre", torch.zeros(3) if centre is None else _vector3(centre, "centre").to(torch.get_default_dtype()))

    def check_support(self, x: Tensor, *, name: str = "x") -> Tensor:
        """Refuse points farther than :data:`~vqflows.checks.SPHERE_TOLERANCE` (relative to the radius) from
        the sphere: ``| |x - m| - r | <= 1e-3 r``. The density is w.r.t. area on the sphere; a point off it
        has none, and projecting it silently would score data of another shape as if it were directional."""
        if not x.shape[0]:
            return x
        with torch.no_grad():
            off = ((x - self.centre.to(x)).norm(dim=-1) - self.radius).abs() / self.radius
            bad = off > SPHERE_TOLERANCE
            if bool(bad.any()):
                where = "the unit sphere (| |x| - 1 | <= " if self.radius == 1.0 and not bool(self.centre.any()) \
                    else f"the sphere of radius {self.radius:g} about {self.centre.tolist()} (| |x - m| - r | <= r * "
                raise ValueError(f"{name}: expected points on {where}{SPHERE_TOLERANCE:g}), got {int(bad.sum())} of "
                                 f"{x.shape[0]} row(s) off it (largest relative distance {float(off.max()):.3g}); "
                                 f"normalise each row (x / |x|) if the data are directions, else use a flow on "
                                 f"R^3 such as 'vq-maf'")
        return x

    def _project(self, x: Tensor, c: Tensor | None) -> Tensor:
        offset = x - self.centre
        # Clamping keeps the centre itself (where every direction is nearest) finite.
        norm = offset.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        return self.embedding.inverse(self.centre + self.radius * offset / norm, c)


def sphere_quadrature(log_prob_fn: Callable[[Tensor], Tensor], n_theta: int, n_phi: int, radius: float = 1.0,
                      *, centre=None, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> float:
    r"""Integrate :math:`\exp(\text{log\_prob\_fn}(x))` over the sphere :math:`S^2(r, m)` w.r.t. area.

    .. math:: \int_{S^2} p \, dA = \int_0^{2\pi} \int_0^\pi p(x(\theta, \phi))\, r^2 \sin\theta \, d\theta \, d\phi,

    with :math:`\theta` the polar and :math:`\phi` the azimuthal angle. In :math:`t = \cos\theta`
    the weight :math:`\sin\theta\,d\theta` becomes :math:`dt`, integrated by ``n_theta``-point
    Gauss–Legendre; :math:`\phi` by the ``n_phi``-point midpoint rule, which is spectrally accurate
    for periodic integrands. Summed in log space.

    Arguments:
        log_prob_fn: ``(M, 3) -> (M,)`` log-densities, ``M = n_theta * n_phi``.
        n_theta: nodes in the polar angle.
        n_phi: nodes in the azimuth.
        radius: ``r``.
        centre: ``m``, shape ``(3,)`` (default the origin).
        dtype: the dtype of the points handed to ``log_prob_fn``.
        device: the device of those points (default the CPU); the sum is taken on the CPU.

    Example:
        >>> uniform = lambda x: torch.full(x.shape[:1], -math.log(4 * math.pi), dtype=x.dtype)
        >>> round(sphere_quadrature(uniform, 8, 8), 12)
        1.0
    """
    radius = _radius(radius)
    if n_theta < 1 or n_phi < 1:
        raise ValueError(f"n_theta, n_phi: expected integers >= 1, got {n_theta} and {n_phi}")
    t, w_t = np.polynomial.legendre.leggauss(n_theta)
    t, w_t = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(w_t, dtype=torch.float64)
    phi = (torch.arange(n_phi, dtype=torch.float64) + 0.5) * (2 * math.pi / n_phi)
    sin = torch.sqrt(1 - t**2)
    t, sin, w_t, phi = t[:, None], sin[:, None], w_t[:, None], phi[None, :]
    unit = torch.stack(torch.broadcast_tensors(sin * torch.cos(phi), sin * torch.sin(phi), t), dim=-1).reshape(-1, 3)
    m = torch.zeros(3, dtype=torch.float64) if centre is None else _vector3(centre, "centre")
    x = (m + radius * unit).to(dtype=dtype, device=device)
    log_w = torch.log(w_t * (2 * math.pi / n_phi) * radius**2).expand(n_theta, n_phi).reshape(-1)
    log_p = torch.as_tensor(log_prob_fn(x)).to(dtype=torch.float64, device="cpu").reshape(-1)
    return float(torch.logsumexp(log_p + log_w, dim=0).exp())


class VMFChartFlow(ChartFlow):
    r"""A chart flow on the unit sphere whose chart map at the identity IS a von Mises–Fisher density.

    Each chart ``k`` has a concentration ``κ_k``, read from the first context column as ``log κ_k``.
    A rotation frame turns the chart's mean direction onto :attr:`axis` ``= e_3``; this flow then maps
    the sphere (minus the antipode) onto the plane by the azimuthal map

    .. math:: z_0 = r(s)\, \frac{(y_1, y_2)}{\|(y_1, y_2)\|}, \qquad s = \kappa (1 - y_3), \qquad
              r^2 = -2 \log\left(1 - \frac{1 - e^{-s}}{1 - e^{-2\kappa}}\right),

    which transports the vMF of concentration κ about ``e_3`` EXACTLY onto ``N(0, I_2)`` (the azimuth is
    uniform under both, and ``r`` matches the radial distributions' CDFs), with
    ``log|det ∂z_0/∂y| = log κ - log(1 - e^{-(2κ - s)})`` w.r.t. the sphere's area. A conditional
    2-D RealNVP ``z = f(z_0; c)`` follows, its output layers zero-initialised so that it starts at the
    identity: at initialisation ``log p(y | k)`` is the vMF log-density of chart ``k`` to float rounding
    (a stereographic chart would match it only approximately, as a Gaussian of variance ``1/(4κ)``).

    The RealNVP sees the context with its first column standardised by ``log_kappa_loc`` and
    ``log_kappa_scale`` (set by the caller, e.g. :func:`vqflows.kernel_flow.kernel_vqflow`).

    Arguments:
        context: the context dimension ``C >= 1`` (column 0 is ``log κ``).
        transforms: coupling layers of the RealNVP (0: the exact vMF charts alone).
        hidden_features: the widths of each coupling layer's network.

    Example:
        >>> flow = VMFChartFlow(context=1)
        >>> y = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> c = torch.tensor([[math.log(50.0)]], dtype=torch.float64)
        >>> float(flow.double().log_prob(y, c).detach()) - math.log(50 / (2 * math.pi))  # the vMF density at its mean
        0.0
    """

    frame = "rotation"

    def __init__(self, context: int = 1, transforms: int = 2, hidden_features: Sequence[int] = (32,)) -> None:
        super().__init__()
        self.features, self.manifold_dim = 3, 2
        self.context = positive_int(context, name="context")
        self.transforms = positive_int(transforms, name="transforms", minimum=0)
        self.base = StandardNormal(2)
        self.axis = torch.tensor([0.0, 0.0, 1.0])
        self.register_buffer("log_kappa_loc", torch.zeros(()))
        self.register_buffer("log_kappa_scale", torch.ones(()))
        self.flow = None
        if self.transforms:
            self.flow = zuko.flows.RealNVP(2, self.context, transforms=self.transforms,
                                           hidden_features=tuple(hidden_features))
            for t in self.flow.transform.transforms:  # the last layer of every hyper-network: identity at start
                last = t.hyper[-1]
                torch.nn.init.zeros_(last.weight)
                torch.nn.init.zeros_(last.bias)
        self._anchor = torch.nn.Parameter(torch.zeros(0))  # dtype and device even without a RealNVP

    def _hyper_context(self, c: Tensor) -> Tensor:
        return torch.cat([(c[:, :1] - self.log_kappa_loc) / self.log_kappa_scale, c[:, 1:]], dim=-1)

    def _to_plane(self, y: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        w = y[:, 2]
        rho2 = y[:, :2].square().sum(-1)
        tiny = torch.finfo(y.dtype).tiny
        north, south = w > 0, w < 0
        # 1 - w and 1 + w without cancellation near the mean (w → 1) and the antipode (w → -1)
        one_minus = torch.where(north, rho2 / torch.where(north, 1 + w, 1.0), 1 - w)
        one_plus = torch.where(south, rho2 / torch.where(south, 1 - w, 1.0), 1 + w)
        s = kappa * one_minus
        gap = (kappa * one_plus).clamp_min(tiny)  # 2κ - s: 0 at the antipode
        # r² = 2 s + 2 [log(1 - e^{-2κ}) - log(1 - e^{-(2κ - s)})]; the bracket, divided by s, tends to
        # 1 / (e^{2κ} - 1) as s → 0, so r²/ρ² = (2 + 2 bracket/s) κ / (1 + w) stays accurate at the mean
        bracket = torch.log(-torch.expm1(-2 * kappa)) - torch.log(-torch.expm1(-gap))
        ratio = torch.where(s > 1e-8 * kappa, bracket / s.clamp_min(tiny), 1 / torch.expm1(2 * kappa))
        near = y[:, :2] * torch.sqrt((2 + 2 * ratio) * kappa / torch.where(north, 1 + w, 1.0))[:, None]
        # elsewhere: the unit direction times r (at the antipode itself any direction serves)
        rho = torch.sqrt(torch.where(rho2 > 0, rho2, 1.0))
        direction = torch.where((rho2 > 0)[:, None], y[:, :2] / rho[:, None], torch.tensor([1.0, 0.0]).to(y))
        far = direction * torch.sqrt((2 + 2 * ratio) * s)[:, None]
        z0 = torch.where(north[:, None], near, far)
        ladj = torch.log(kappa) - torch.log(-torch.expm1(-gap))
        return z0, ladj

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kappa = c[:, 0].exp()
        z, ladj = self._to_plane(x, kappa)
        if self.flow is not None:
            z, extra = self.flow(self._hyper_context(c)).transform.call_and_ladj(z)
            ladj = ladj + extra
        return z, ladj

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        if self.flow is not None:
            z, ladj = self.flow(self._hyper_context(c)).transform.inv.call_and_ladj(z)
        kappa = c[:, 0].exp()
        r2 = z.square().sum(-1)
        # F = 1 - e^{-r²/2}; e^{-s} = 1 - F (1 - e^{-2κ}) = e^{-r²/2} + e^{-2κ} F, summed in log space; s = κ (1 - w)
        s = -torch.logaddexp(-r2 / 2, -2 * kappa + torch.log(-torch.expm1(-r2 / 2)))
        t = (s / kappa).clamp(0.0, 2.0)  # 1 - w
        w = 1 - t
        rho = torch.sqrt((t * (2 - t)).clamp_min(0.0))
        norm = z.norm(dim=-1, keepdim=True)
        direction = torch.where(norm > 0, z / norm.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(z))
        y = torch.cat([direction * rho[:, None], w[:, None]], dim=-1)
        return y, ladj - self._to_plane(y, kappa)[1]
