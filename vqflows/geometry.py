r"""Geometry of the unit sphere: rotations, stereographic projection, latitude/longitude, von Mises–Fisher.

Plain functions on tensors (and, where the data come from a NumPy generator, on arrays); every tensor
they create lives on the device and in the floating dtype of the tensor they are given, and non-tensor
input is read as float64.

* :func:`rotation_to` and :func:`tangent_basis`: frames in which a direction becomes ``e_3``;
* :func:`stereographic` and :func:`inverse_stereographic`: the chart :math:`S^d \setminus \{\text{pole}\}
  \to \mathbb{R}^d` and its inverse with the log conformal factor;
* :func:`latlon_to_xyz` and :func:`xyz_to_latlon`: degrees on the Earth ↔ unit vectors in ``R^3``;
* :func:`vmf_log_normalizer`, :func:`vmf_log_density`, :func:`vmf_log_prob` and :func:`sample_vmf`:
  the von Mises–Fisher distribution :math:`p(x) = C_p(\kappa) e^{\kappa \mu^\top x}` w.r.t. the surface
  measure of :math:`S^{p-1} \subset \mathbb{R}^p`.

Letters: N points (any leading shape ``*``), d sphere dimension, p = d + 1 the ambient dimension.
"""

from __future__ import annotations

__all__ = [
    "inverse_stereographic",
    "latlon_to_xyz",
    "rotation_to",
    "sample_vmf",
    "stereographic",
    "tangent_basis",
    "vmf_log_density",
    "vmf_log_normalizer",
    "vmf_log_prob",
    "xyz_to_latlon",
]

import math

import numpy as np
import torch
from torch import Tensor

from .checks import one_of

_LOG_2PI = math.log(2 * math.pi)
_LOG_4PI = math.log(4 * math.pi)
_LOG_2 = math.log(2.0)

#: In float64, ``1 + cos ∠(d, e_3)`` below this sends :func:`rotation_to` to its near-antipode branch.
_ANTIPODE = 1e-12

#: From this κ on, the S² sampler inverts the CDF in the direct form (see :func:`sample_vmf`).
_DIRECT_FROM = 1.0

#: Below this κ (and wherever scipy's scaled Bessel function underflows) the normaliser for general
#: ``p`` sums the power series of ``I_v``, which converges in a few terms there.
_SERIES_BELOW = 1.0


def _as_float(value, *, like: Tensor | None = None, name: str) -> Tensor:
    """``value`` as a floating tensor: tensors keep device and floating dtype (integers become float64),
    anything else becomes float64, on ``like``'s device (and in its dtype) when ``like`` is given."""
    if isinstance(value, Tensor):
        return value if value.is_floating_point() else value.to(torch.float64)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a real number or array, got {type(value).__name__}") from None
    if like is None:
        return torch.from_numpy(array)
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)


def _last_dim(t: Tensor, size: int | None, name: str, shape: str) -> None:
    if t.dim() == 0 or (size is not None and t.shape[-1] != size):
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


# ------------------------------------------------------------------------------------------ rotations


def rotation_to(direction) -> Tensor:
    r"""Rotations ``R`` with :math:`R e_3 = d / \|d\|`: ``(*, 3) -> (*, 3, 3)``, ``det R = 1``.

    Rodrigues' formula for the shortest turn, about :math:`e_3 \times d`:
    :math:`R = I + K + K^2 / (1 + e_3^\top d)` with :math:`K` the cross-product matrix of
    :math:`e_3 \times d`. Its columns ``R e_1, R e_2`` are an orthonormal basis of the tangent plane
    at ``d``. Near :math:`-e_3` the formula divides by almost zero, so there ``R = H Q`` with
    ``H = diag(1, -1, -1)`` (the half-turn about :math:`e_1`) and ``Q`` the shortest turn onto
    ``H d``, which lies near :math:`+e_3`; at :math:`d = -e_3` exactly, ``R = H``. In float64 that
    branch is taken for ``1 + e_3^T d < 1e-12`` (Rodrigues keeps errors below 1e-9 up to there); in
    lower precision, where it would lose more digits, for the whole southern hemisphere.

    Arguments:
        direction: non-zero vectors ``(*, 3)``; a tensor keeps its device and floating dtype.

    Example:
        >>> rotation_to([0.0, 0.0, -2.0])
        tensor([[ 1.,  0.,  0.],
                [ 0., -1.,  0.],
                [ 0.,  0., -1.]], dtype=torch.float64)
    """
    d = _as_float(direction, name="direction")
    _last_dim(d, 3, "direction", "(*, 3)")
    norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    if not torch.isfinite(d).all():
        raise ValueError("direction: expected finite values, got NaN or inf")
    if (norm == 0).any():
        raise ValueError("direction: expected a non-zero vector, got 0")
    d = d / norm
    band = _ANTIPODE if d.dtype == torch.float64 else 1.0
    south = d[..., 2] < -1 + band
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=d.dtype, device=d.device)  # the diagonal of H
    d = torch.where(south[..., None], d * flip, d)
    e3 = torch.zeros_like(d)
    e3[..., 2] = 1.0
    v1, v2, v3 = torch.linalg.cross(e3, d).unbind(-1)
    zero = torch.zeros_like(v1)
    k = torch.stack([torch.stack([zero, -v3, v2], -1),
                     torch.stack([v3, zero, -v1], -1),
                     torch.stack([-v2, v1, zero], -1)], -2)
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    r = eye + k + k @ k / (1 + d[..., 2])[..., None, None]
    # H Q; adding 0 turns the -0 entries that negating rows leaves into 0
    return torch.where(south[..., None, None], flip[:, None] * r + 0.0, r)


def tangent_basis(direction):
    r"""Two unit vectors ``(e_1, e_2)`` making ``(e_1, e_2, d)`` a right-handed orthonormal basis.

    :math:`e_1 = d \times a / \|d \times a\|` with ``a`` the coordinate axis least aligned with ``d``
    (so the cross product never degenerates) and :math:`e_2 = d \times e_1`.

    Arguments:
        direction: unit vectors ``(*, 3)``, a tensor or a NumPy array.

    Returns:
        ``(e_1, e_2)``, each ``(*, 3)``: tensors on ``direction``'s device and in its dtype, or
        float64 NumPy arrays for anything else.
    """
    if isinstance(direction, Tensor):
        d = _as_float(direction, name="direction")
        _last_dim(d, 3, "direction", "(*, 3)")
        axis = torch.nn.functional.one_hot(d.abs().argmin(-1), 3).to(d.dtype)
        e1 = torch.linalg.cross(d, axis)
        e1 = e1 / torch.linalg.vector_norm(e1, dim=-1, keepdim=True)
        return e1, torch.linalg.cross(d, e1)
    d = np.asarray(direction, dtype=np.float64)
    if d.ndim == 0 or d.shape[-1] != 3:
        raise ValueError(f"direction: expected shape (*, 3), got {d.shape}")
    axis = np.eye(3)[np.abs(d).argmin(axis=-1)]
    e1 = np.cross(d, axis)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    return e1, np.cross(d, e1)


# -------------------------------------------------------------------------------- stereographic maps


def _pole_sign(pole: str) -> float:
    return {"north": 1.0, "south": -1.0}[one_of(pole, ("north", "south"), name="pole")]


def stereographic(x: Tensor, pole: str = "north") -> Tensor:
    r"""Stereographic projection of the unit sphere :math:`S^d` from a pole: ``(*, d + 1) -> (*, d)``.

    From the north pole :math:`e_{d+1}`, :math:`u = x_{1..d} / (1 - x_{d+1})`; from the south pole
    :math:`-e_{d+1}`, :math:`u = x_{1..d} / (1 + x_{d+1})`. The pole itself goes to infinity.

    Arguments:
        x: points on the unit sphere, ``(*, d + 1)``, ``d >= 1``.
        pole: ``"north"`` or ``"south"``, the projection point.
    """
    sign = _pole_sign(pole)
    _last_dim(x, None, "x", "(*, d + 1)")
    if x.shape[-1] < 2:
        raise ValueError(f"x: expected shape (*, d + 1) with d >= 1, got {tuple(x.shape)}")
    return x[..., :-1] / (1 - sign * x[..., -1:])


def inverse_stereographic(u: Tensor, pole: str = "north") -> tuple[Tensor, Tensor]:
    r"""The inverse of :func:`stereographic` and its log conformal factor: ``(*, d) -> ((*, d + 1), (*))``.

    .. math:: x = \left(\frac{2u}{1 + \|u\|^2},\; \pm\frac{\|u\|^2 - 1}{1 + \|u\|^2}\right), \qquad
              \log \lambda(u) = \log 2 - \log(1 + \|u\|^2),

    with ``+`` for the north pole, ``-`` for the south one, so ``u = 0`` lands on the opposite pole.
    The Jacobian ``J`` of ``u -> x`` satisfies :math:`J^\top J = \lambda^2 I_d`: a density ``q`` on
    the plane is :math:`q(u) \lambda(u)^{-d}` w.r.t. the surface measure of the sphere.

    Example:
        >>> x, log_lambda = inverse_stereographic(torch.zeros(1, 2), pole="north")
        >>> x, log_lambda.exp()
        (tensor([[ 0.,  0., -1.]]), tensor([2.]))
    """
    sign = _pole_sign(pole)
    _last_dim(u, None, "u", "(*, d)")
    uu = u.square().sum(-1, keepdim=True)
    denominator = 1 + uu
    x = torch.cat([2 * u / denominator, sign * (uu - 1) / denominator], dim=-1)
    return x, _LOG_2 - torch.log1p(uu.squeeze(-1))


# ---------------------------------------------------------------------------------- latitude/longitude


def latlon_to_xyz(lat, lon):
    """Unit vectors from latitude and longitude in degrees: ``(*), (*) -> (*, 3)``.

    ``x = cos(lat) cos(lon), y = cos(lat) sin(lon), z = sin(lat)``. Tensors give a tensor of
    the same floating dtype (float64 for integers) on the same device; anything else gives a
    float64 NumPy array.

    Example:
        >>> latlon_to_xyz(0.0, 90.0).round(12)
        array([0., 1., 0.])
    """
    if isinstance(lat, Tensor) or isinstance(lon, Tensor):
        device = (lat if isinstance(lat, Tensor) else lon).device
        lat, lon = (v if isinstance(v, (Tensor, int, float)) else torch.as_tensor(np.asarray(v), device=device)
                    for v in (lat, lon))
        # result_type lets a Python number follow the tensor's dtype, as arithmetic would
        dtype = torch.result_type(lat, lon)
        dtype = dtype if dtype.is_floating_point else torch.float64
        lat = torch.deg2rad(torch.as_tensor(lat, device=device).to(dtype))
        lon = torch.deg2rad(torch.as_tensor(lon, device=device).to(dtype))
        c = torch.cos(lat)
        return torch.stack(torch.broadcast_tensors(c * torch.cos(lon), c * torch.sin(lon), torch.sin(lat)), dim=-1)
    lat = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lon = np.deg2rad(np.asarray(lon, dtype=np.float64))
    c = np.cos(lat)
    return np.stack(np.broadcast_arrays(c * np.cos(lon), c * np.sin(lon), np.sin(lat)), axis=-1)


def xyz_to_latlon(xyz):
    """Latitude and longitude in degrees of points in R³: ``(*, 3) -> ((*), (*))``.

    The inverse of :func:`latlon_to_xyz`: ``lat = asin(z / |x|)`` in ``[-90, 90]`` and
    ``lon = atan2(y, x)`` in ``(-180, 180]``. Points need not be unit vectors, only non-zero.
    Tensors give tensors (same device and floating dtype); anything else gives float64 NumPy arrays.
    """
    is_tensor = isinstance(xyz, Tensor)
    v = xyz.to(torch.float64) if is_tensor else torch.as_tensor(np.asarray(xyz, dtype=np.float64))
    if v.dim() == 0 or v.shape[-1] != 3:
        raise ValueError(f"xyz: expected shape (*, 3), got {tuple(v.shape)}")
    r = torch.linalg.vector_norm(v, dim=-1)
    if not (torch.isfinite(r).all() and (r > 0).all()):
        raise ValueError("xyz: expected finite, non-zero points")
    # atan2 of (z, horizontal radius) stays accurate near the poles, where asin(z) does not.
    lat = torch.rad2deg(torch.atan2(v[..., 2], torch.hypot(v[..., 0], v[..., 1])))
    lon = torch.rad2deg(torch.atan2(v[..., 1], v[..., 0]))
    lon = torch.where(lon == -180.0, torch.full_like(lon, 180.0), lon)
    if is_tensor:
        dtype = xyz.dtype if xyz.is_floating_point() else torch.float64
        return lat.to(dtype), lon.to(dtype)
    return lat.numpy(), lon.numpy()


# -------------------------------------------------------------------------------------- von Mises–Fisher


def vmf_log_normalizer(kappa, dim: int = 3) -> Tensor:
    r"""``log C_p(κ) + κ``, the von Mises–Fisher log-density at the mean direction, elementwise.

    With ``v = p/2 - 1``, :math:`C_p(\kappa) = \kappa^v / ((2\pi)^{p/2} I_v(\kappa))` w.r.t. the
    surface measure of :math:`S^{p-1}`; at κ = 0 the value is ``-log |S^{p-1}|``, the uniform density.

    * ``p = 3``: ``log κ - log 2π - log(1 - e^{-2κ})``, written with ``expm1`` so that it is
      accurate and differentiable from κ = 0 to any finite κ.
    * ``p = 2``: ``-log 2π - log(I_0(κ) e^{-κ})`` by ``torch.special.i0e``, differentiable.
    * other ``p >= 2``: scipy's exponentially scaled ``I_v``, or below κ = 1 (and wherever that
      underflows, as it does for large ``p`` and moderate κ) the power series of ``I_v`` with the
      leading ``(κ/2)^v`` divided out, summed in log space. Evaluated in float64 on the CPU and
      returned on ``kappa``'s device; not differentiable.

    Arguments:
        kappa: concentrations ``κ >= 0``, any shape; a tensor keeps its device and floating dtype,
            anything else becomes float64.
        dim: the ambient dimension ``p >= 2`` (the sphere is :math:`S^{p-1}`).

    Example:
        >>> vmf_log_normalizer([0.0, 1e4])  # -log 4π, and log(κ / 2π) for large κ
        tensor([-2.5310,  7.3725], dtype=torch.float64)
    """
    kappa = _as_float(kappa, name="kappa")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"dim: expected an integer >= 2, got {dim!r}")
    if dim == 3:
        positive = kappa > 0
        # Evaluate the formula only where it is defined so that autograd sees no NaN at κ = 0.
        k = torch.where(positive, kappa, torch.ones_like(kappa))
        value = torch.log(k) - _LOG_2PI - torch.log(-torch.expm1(-2 * k))
        return torch.where(positive, value, torch.full_like(value, -_LOG_4PI))
    if dim == 2:
        return -_LOG_2PI - torch.log(torch.special.i0e(kappa))
    if kappa.requires_grad:
        raise ValueError(f"kappa: expected no gradient for dim = {dim} (differentiable for dim 2 and 3 only)")
    values = _log_normalizer_any_dim(kappa.detach().cpu().to(torch.float64).numpy(), int(dim))
    return torch.from_numpy(values).to(device=kappa.device, dtype=kappa.dtype)


def _log_normalizer_any_dim(kappa: np.ndarray, p: int) -> np.ndarray:
    from scipy import special  # deferred: importing scipy.special costs a second, and only this needs it

    v = p / 2 - 1
    const = -0.5 * p * _LOG_2PI
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = special.ive(v, kappa)  # I_v(κ) e^{-κ}
        direct = v * np.log(kappa) + const - np.log(scaled)
    series = (kappa < _SERIES_BELOW) | ~(scaled > 0) | ~np.isfinite(direct)
    out = np.where(series, 0.0, direct)
    if series.any():
        k = kappa[series]
        # I_v(κ) = (κ/2)^v / Γ(v+1) · S with S = Σ_m (κ²/4)^m Γ(v+1) / (m! Γ(m+v+1)); the terms peak
        # near m = κ² / (4 (v + 1)) for κ ≪ v, the only regime outside κ < 1 that reaches here.
        terms = 40 + int(np.ceil(4 * (k**2).max(initial=0.0) / (4 * (v + 1))))
        m = np.arange(terms, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # κ = 0 leaves only the m = 0 term
            power = np.where(m == 0, 0.0, m * 2 * np.log(k / 2))
        log_terms = power - special.gammaln(m + 1) - special.gammaln(m + v + 1) + special.gammaln(v + 1)
        log_s = special.logsumexp(log_terms, axis=0)
        out[series] = k + v * _LOG_2 + special.gammaln(v + 1) + const - log_s
    return out


def vmf_log_density(cos: Tensor, kappa, dim: int = 3) -> Tensor:
    r"""von Mises–Fisher log-density as a function of the cosine ``t = μᵀx``: ``(*) -> (*)``.

    :math:`\log p = \log C_p(\kappa) + \kappa t = (\log C_p(\kappa) + \kappa) + \kappa (t - 1)`,
    the form that stays finite for large κ. ``kappa`` broadcasts against ``cos``; a non-tensor
    ``kappa`` is created on ``cos``'s device in its dtype, and the result has ``cos``'s dtype.

    Arguments:
        cos: cosines ``μᵀx`` in ``[-1, 1]``, any shape, e.g. ``(N, K)`` from ``x @ mu.T``.
        kappa: concentrations ``κ >= 0``, broadcastable to ``cos``.
        dim: the ambient dimension ``p``; see :func:`vmf_log_normalizer`.
    """
    kappa = _as_float(kappa, like=cos, name="kappa")
    # The normaliser is one value per κ: evaluated in float64, it is rounded once into cos's dtype.
    return vmf_log_normalizer(kappa.to(torch.float64), dim).to(cos.dtype) + kappa * (cos - 1)


def vmf_log_prob(x: Tensor, mu, kappa) -> Tensor:
    r"""von Mises–Fisher log-density of unit vectors ``x`` w.r.t. the surface measure: ``(*, p) -> (*)``.

    ``mu`` (unit mean directions) broadcasts against ``x``, e.g. ``x[:, None, :]`` against ``(K, p)``
    means gives ``(N, K)``; ``kappa`` broadcasts against the result. No input checks: see
    :func:`vqflows.vmf.vmf_log_prob` for the validated mixture-friendly version on S².

    Example:
        >>> x = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> vmf_log_prob(x, [0.0, 0.0, 1.0], 0.0)  # uniform on S²: -log 4π
        tensor([-2.5310], dtype=torch.float64)
    """
    _last_dim(x, None, "x", "(*, p)")
    mu = _as_float(mu, like=x, name="mu")
    return vmf_log_density((x * mu).sum(-1), kappa, dim=x.shape[-1])


def sample_vmf(mean: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    r"""Exact von Mises–Fisher draws on S², one per row of ``mean``: ``(N, 3) -> (N, 3)`` float64.

    On S² the cosine ``w = μᵀx`` has density ``∝ e^{κw}`` on ``[-1, 1]``, whose CDF inverts in
    closed form (Wood, 1994): :math:`w = 1 + \log(v + (1 - v) e^{-2\kappa}) / \kappa` for
    ``v ~ U(0, 1)``; the azimuth around ``μ`` is uniform, measured from ``e_1`` of
    :func:`tangent_basis`. The generator draws all ``N`` values of ``v``, then all ``N`` azimuths.

    From κ = 1 on the direct form above is used: its rounding error in ``w`` is about ``ε / κ``,
    and the ``spherical`` dataset's seeded points are defined by it. Below κ = 1 the log of a
    number near 1 would cost digits, so ``w = 1 + log1p((1 - v) expm1(-2κ)) / κ`` is used, and
    κ = 0 gives the uniform ``w = 2v - 1``.

    Arguments:
        mean: unit mean directions, one per draw, ``(N, 3)``.
        kappa: one concentration ``κ >= 0``.
        rng: the NumPy generator to draw from.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"mean: expected shape (N, 3), got {mean.shape}")
    kappa = float(kappa)
    if not (math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa: expected a finite number >= 0, got {kappa!r}")
    n = mean.shape[0]
    v = rng.uniform(size=n)
    if kappa >= _DIRECT_FROM:
        w = 1 + np.log(v + (1 - v) * math.exp(-2 * kappa)) / kappa
    elif kappa > 0:
        w = 1 + np.log1p((1 - v) * math.expm1(-2 * kappa)) / kappa
    else:
        w = 2 * v - 1
    # rounding can step past ±1 only for v within an ulp of 0; clipping keeps those draws on the sphere
    w = np.clip(w, -1.0, 1.0)
    phi = rng.uniform(0, 2 * math.pi, size=n)
    e1, e2 = tangent_basis(mean)
    side = np.sqrt(np.clip(1 - w**2, 0, None))
    return w[:, None] * mean + side[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
