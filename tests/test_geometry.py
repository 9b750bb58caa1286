"""Sphere geometry: rotations, stereographic maps, lat/lon, and the von Mises–Fisher density and sampler.

scipy's ``vonmises_fisher`` is the oracle for the density; the sampler is checked against the exact law of
the cosine ``μᵀx``. The ``spherical`` dataset's seeded points are pinned: they define a benchmark table.
"""

from __future__ import annotations

import hashlib
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats
from torch.autograd.functional import jacobian

from vqflows import geometry as g
from vqflows.datasets import Spherical
from vqflows.flows.sphere import stereographic_embedding


def unit_rows(n: int, p: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def log_area(p: int) -> float:
    """log |S^{p-1}| = log 2 + (p/2) log π - lgamma(p/2)."""
    return math.log(2) + p / 2 * math.log(math.pi) - math.lgamma(p / 2)


def cosine_cdf(kappa: float):
    """CDF of w = μᵀx on S²: density κ e^{κ w} / (2 sinh κ) on [-1, 1], uniform at κ = 0."""
    if kappa == 0:
        return lambda t: (t + 1) / 2
    return lambda t: -np.expm1(-kappa * (t + 1)) * np.exp(kappa * (t - 1)) / -np.expm1(-2 * kappa)


# --------------------------------------------------------------------------------------------- rotations


def test_rotation_to_is_a_rotation_onto_the_direction():
    d = torch.from_numpy(np.random.default_rng(0).standard_normal((500, 3))) * 3
    special = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -5.0], [1e-9, 0.0, -1.0],
                            [-1e-7, 1e-7, -1.0], [1e-3, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -2.0, 0.0]],
                           dtype=torch.float64)
    d = torch.cat([special, d])
    r = g.rotation_to(d)
    assert r.shape == (len(d), 3, 3) and r.dtype == torch.float64
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(d), dtype=torch.float64), rtol=0, atol=1e-9)
    unit = d / d.norm(dim=-1, keepdim=True)
    # R e_3 = d / |d|, also at and near -e_3, where Rodrigues' division by 1 + cos costs a few digits
    torch.testing.assert_close(r[..., 2], unit, rtol=0, atol=1e-9)
    clear = unit[:, 2] > -1 + 1e-3
    torch.testing.assert_close(r[clear][..., 2], unit[clear], rtol=0, atol=1e-13)
    torch.testing.assert_close(r[0], eye[0], rtol=0, atol=0)
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert r[1].numpy().tobytes() == half_turn.numpy().tobytes()  # exactly, zeros without sign
    # away from -e_3 it is the shortest turn: the axis e_3 × d stays fixed
    axis = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(unit), unit)[8:]
    torch.testing.assert_close((r[8:] @ axis[..., None])[..., 0], axis, rtol=0, atol=1e-12)
    # batched = one at a time, bit for bit
    for i in (0, 1, 3, 9, 100):
        assert torch.equal(g.rotation_to(d[i]), r[i])


def test_rotation_to_pins_values_and_checks_input():
    # Rodrigues by hand for d = (1, -2, 2) / 3: K from v = e_3 × d = (2/3, 1/3, 0), 1 + cos = 5/3.
    r = g.rotation_to([1.0, -2.0, 2.0])
    expected = torch.tensor([[14, 2, 5], [2, 11, -10], [-5, 10, 10]], dtype=torch.float64) / 15
    torch.testing.assert_close(r, expected, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="direction: expected a non-zero vector, got 0"):
        g.rotation_to([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"direction: expected shape \(\*, 3\), got \(2,\)"):
        g.rotation_to([1.0, 0.0])
    with pytest.raises(ValueError, match="direction: expected finite values"):
        g.rotation_to([float("nan"), 0.0, 1.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotation_to_keeps_low_precision_dtypes_accurate(dtype):
    # in low precision the near-antipode branch covers the southern hemisphere; both branches stay accurate
    d = torch.from_numpy(unit_rows(300, 3, seed=1))
    d[:3] = torch.tensor([[0.0, 0.0, -1.0], [1e-3, 0.0, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    r = g.rotation_to(d.to(dtype))
    assert r.dtype == dtype
    r = r.double()
    tol = 10 * torch.finfo(dtype).eps
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    assert float((r.transpose(-1, -2) @ r - eye).abs().max()) < tol
    assert float((r[..., 2] - d.to(dtype).double()).abs().max()) < tol


def test_tangent_basis_is_right_handed_and_orthonormal_in_torch_and_numpy():
    d = unit_rows(200, 3, seed=2)
    d[0] = [0.0, 0.0, -1.0]
    d[1] = [1.0, 0.0, 0.0]
    for e1, e2, dd in [(*g.tangent_basis(d), d), (*(t.numpy() for t in g.tangent_basis(torch.from_numpy(d))), d)]:
        frame = np.stack([e1, e2, dd], axis=-1)  # columns e1, e2, d
        np.testing.assert_allclose(np.swapaxes(frame, -1, -2) @ frame, np.broadcast_to(np.eye(3), frame.shape), atol=1e-14)
        np.testing.assert_allclose(np.linalg.det(frame), 1.0, atol=1e-14)
    np.testing.assert_allclose(g.tangent_basis(torch.from_numpy(d))[0].numpy(), g.tangent_basis(d)[0], atol=1e-15)
    assert g.tangent_basis(torch.from_numpy(d).float())[1].dtype == torch.float32


# --------------------------------------------------------------------------------------- stereographic


@pytest.mark.parametrize("pole", ["north", "south"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_stereographic_round_trip_and_poles(pole, d):
    u = torch.from_numpy(np.random.default_rng(3).standard_normal((200, d))) * 2
    x, log_lambda = g.inverse_stereographic(u, pole)
    assert x.shape == (200, d + 1) and log_lambda.shape == (200,)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(200, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(g.stereographic(x, pole), u, rtol=1e-12, atol=1e-12)
    y = torch.from_numpy(unit_rows(200, d + 1, seed=4))
    torch.testing.assert_close(g.inverse_stereographic(g.stereographic(y, pole), pole)[0], y, rtol=0, atol=1e-12)
    sign = 1.0 if pole == "north" else -1.0
    # u = 0 lands on the opposite pole; far points approach the projection point
    x0 = g.inverse_stereographic(torch.zeros(1, d, dtype=torch.float64), pole)[0][0]
    assert float(x0[-1]) == -sign and float(x0[:-1].abs().max()) == 0
    far = g.inverse_stereographic(torch.full((1, d), 1e8, dtype=torch.float64), pole)[0][0]
    assert float(far[-1]) == pytest.approx(sign, abs=1e-12)


@pytest.mark.parametrize("pole", ["north", "south"])
def test_stereographic_log_factor_matches_autograd_jacobian(pole):
    u = torch.from_numpy(np.random.default_rng(5).standard_normal((20, 2))) * 1.5
    _, log_lambda = g.inverse_stereographic(u, pole)
    for i in range(len(u)):
        jac = jacobian(lambda v: g.inverse_stereographic(v, pole)[0], u[i])  # (3, 2)
        lam2 = torch.exp(2 * log_lambda[i])
        torch.testing.assert_close(jac.T @ jac, lam2 * torch.eye(2, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="pole: expected one of 'north', 'south', got 'east'"):
        g.stereographic(torch.zeros(1, 3), "east")


@pytest.mark.parametrize("pole", ["north", "south"])
def test_sphere_flow_embedding_is_the_geometry_map(pole):
    # the sphere flow's chain of conformal layers is x = m + r R σ⁻¹(u), λ = r λ_σ
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        r, m = 2.5, torch.tensor([1.0, -2.0, 0.5])
        rot = g.rotation_to([0.3, -0.4, 0.8])
        emb = stereographic_embedding(r, m, pole=pole, rotation=rot)
        u = torch.from_numpy(np.random.default_rng(6).standard_normal((100, 2))) * 2
        x, log_lambda = g.inverse_stereographic(u, pole)
        got, got_log = emb.forward_and_log_factor(u)
        torch.testing.assert_close(got, m + r * x @ rot.T, rtol=0, atol=1e-12)
        torch.testing.assert_close(got_log, math.log(r) + log_lambda, rtol=0, atol=1e-12)
        torch.testing.assert_close(emb.inverse(got), g.stereographic((got - m) @ rot / r, pole), rtol=1e-10, atol=1e-10)
    finally:
        torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------------- latitude/longitude


def test_latlon_round_trip_and_dtypes():
    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(-89.9, 89.9, 300), rng.uniform(-179.9, 180.0, 300)
    xyz = g.latlon_to_xyz(lat, lon)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, atol=1e-15)
    back = g.xyz_to_latlon(xyz)
    np.testing.assert_allclose(back[0], lat, atol=1e-10)
    np.testing.assert_allclose(back[1], lon, atol=1e-10)
    assert g.latlon_to_xyz(torch.tensor([10.0], dtype=torch.float16), 20.0).dtype == torch.float16
    assert g.latlon_to_xyz(torch.tensor([10]), torch.tensor([20])).dtype == torch.float64
    t = g.latlon_to_xyz(torch.from_numpy(lat), torch.from_numpy(lon))
    np.testing.assert_allclose(t.numpy(), xyz, rtol=0, atol=1e-15)  # one formula for tensors and arrays
    assert all(v.dtype == torch.float32 for v in g.xyz_to_latlon(t.float()))


# ---------------------------------------------------------------------------------------- vMF density


@pytest.mark.parametrize("p", [2, 3, 4, 5, 10])
@pytest.mark.parametrize("kappa", [1e-12, 1e-3, 0.5, 0.999, 1.0, 3.0, 30.0, 1e4])
def test_vmf_log_prob_matches_scipy(p, kappa):
    mu = unit_rows(1, p, seed=p + 100)[0]
    x = unit_rows(40, p, seed=p + 200)
    x[0], x[1] = mu, -mu
    expected = stats.vonmises_fisher(mu, kappa).logpdf(x)
    got = g.vmf_log_prob(torch.from_numpy(x), torch.from_numpy(mu), kappa)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    # the same through the cosine, with κ broadcast as a tensor
    cos = torch.from_numpy(x @ mu)
    np.testing.assert_allclose(g.vmf_log_density(cos, torch.tensor(kappa, dtype=torch.float64), dim=p).numpy(),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [2, 3, 5, 10, 101])
def test_vmf_log_normalizer_at_zero_is_uniform_and_continuous(p):
    kappa = torch.tensor([0.0, 1e-300, 1e-12, 1e-6], dtype=torch.float64)
    # log C_p(κ) + κ = -log|S^{p-1}| + κ + O(κ²): the slope at 0 is 1 - A_p(0) = 1
    torch.testing.assert_close(g.vmf_log_normalizer(kappa, p), kappa - log_area(p), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("p", "kappa"), [(1000, 10.0), (1000, 300.0), (200, 1e-3), (50, 0.99), (50, 1.01),
                                          (2001, 500.0)])
def test_vmf_log_normalizer_in_high_dimension_matches_mpmath(p, kappa):
    # scipy's scaled Bessel function underflows for most of these; the power series takes over
    mpmath.mp.dps = 40
    v = mpmath.mpf(p) / 2 - 1
    k = mpmath.mpf(kappa)
    exact = v * mpmath.log(k) - p / 2 * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(v, k)) + k
    got = float(g.vmf_log_normalizer(kappa, p))
    assert got == pytest.approx(float(exact), rel=1e-13)


def test_vmf_log_normalizer_gradients_for_dim_2_and_3():
    kappa = torch.tensor([0.3, 2.0, 40.0], dtype=torch.float64, requires_grad=True)
    for p in (2, 3):
        (grad,) = torch.autograd.grad(g.vmf_log_normalizer(kappa, p).sum(), kappa)
        # d/dκ (log C_p + κ) = 1 - A_p(κ), with A_p the mean resultant length I_{p/2} / I_{p/2-1}
        k = kappa.detach().numpy()
        a = special.ive(p / 2, k) / special.ive(p / 2 - 1, k)
        np.testing.assert_allclose(grad.numpy(), 1 - a, rtol=1e-10)
    with pytest.raises(ValueError, match="kappa: expected no gradient for dim = 5"):
        g.vmf_log_normalizer(kappa, 5)
    with pytest.raises(ValueError, match="dim: expected an integer >= 2, got 1"):
        g.vmf_log_normalizer(1.0, 1)


@pytest.mark.parametrize("kappa", [0.0, 1e4])
def test_vmf_log_density_is_finite_at_the_extremes(kappa):
    cos = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    lp = g.vmf_log_density(cos, kappa)
    assert torch.isfinite(lp).all()
    if kappa == 0:
        torch.testing.assert_close(lp, torch.full((3,), -math.log(4 * math.pi), dtype=torch.float64))
    else:
        torch.testing.assert_close(lp, math.log(kappa / (2 * math.pi)) + kappa * (cos - 1), rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------- vMF sampler


@pytest.mark.parametrize("kappa", [0.0, 1e-9, 0.5, 0.999999, 1.0, 8.0, 1e3])
def test_sample_vmf_follows_the_exact_law(kappa):
    mu = np.array([-0.2, 0.9, 0.4]) / np.linalg.norm([-0.2, 0.9, 0.4])
    n = 20_000
    x = g.sample_vmf(np.tile(mu, (n, 1)), kappa, np.random.default_rng(11))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-14)
    w = x @ mu
    # mean resultant length A(κ) = coth κ - 1/κ (scipy's own draws as a second opinion at large n)
    mean_w = kappa / 3 if kappa < 1e-4 else 1 / math.tanh(kappa) - 1 / kappa
    assert abs(w.mean() - mean_w) < 5 * w.std() / math.sqrt(n) + 1e-12
    assert stats.kstest(w, cosine_cdf(kappa)).pvalue > 1e-3
    if kappa > 0:
        reference = stats.vonmises_fisher(mu, kappa).rvs(n, random_state=np.random.default_rng(12)) @ mu
        assert stats.ks_2samp(w, reference).pvalue > 1e-3
    # the azimuth about μ is uniform
    e1, e2 = g.tangent_basis(mu)
    phi = np.arctan2(x @ e2, x @ e1)
    assert stats.kstest(phi, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3


def test_sample_vmf_forms_agree_where_they_meet():
    # κ = 1 switches from the log1p form to the direct form; the draws must not jump
    mean = np.tile([0.0, 0.6, 0.8], (1000, 1))
    below = g.sample_vmf(mean, 1 - 1e-12, np.random.default_rng(0))
    at = g.sample_vmf(mean, 1.0, np.random.default_rng(0))
    assert np.abs(below - at).max() < 1e-10


def test_sample_vmf_is_seeded_and_checks_input():
    mean = np.tile([1.0, 0.0, 0.0], (5, 1))
    np.testing.assert_array_equal(g.sample_vmf(mean, 3.0, np.random.default_rng(4)),
                                  g.sample_vmf(mean, 3.0, np.random.default_rng(4)))
    with pytest.raises(ValueError, match=r"mean: expected shape \(N, 3\), got \(3,\)"):
        g.sample_vmf(np.array([1.0, 0.0, 0.0]), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="kappa: expected a finite number >= 0, got -1.0"):
        g.sample_vmf(mean, -1.0, np.random.default_rng(0))


def test_spherical_dataset_samples_are_pinned():
    # Values drawn by the dataset before its sampler moved into the geometry module.
    ds = Spherical()
    x = ds.sample(1000, seed=0)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == \
        "5310e0ca943108e25746c5072ad57208d72836d3ae1efdcaadd8ffd23cf7590c"
    expected = torch.tensor([[-0.9002223014831543, -2.8927218914031982, -2.8589820861816406],
                             [-3.935396432876587, 0.6050781607627869, 0.4038175940513611],
                             [-1.0043631792068481, -1.5766793489456177, -3.490992784500122]])
    torch.testing.assert_close(x[[0, 1, 999]], expected, rtol=0, atol=0)
    y = ds._sample(2000, np.random.default_rng(1))
    first = [float.fromhex(h) for h in ("-0x1.e308b58919256p+1", "-0x1.09d9272bff0f7p+0", "-0x1.2c871c29ed998p+0")]
    assert y[0].tolist() == first
    assert hashlib.sha256(y.tobytes()).hexdigest() == "e8db9d1c082578ea68c5b77b8165658c92f758753eaec37fe552aa3d8be7d5cc"


# ------------------------------------------------------------------------------------ devices and dtypes


def test_functions_keep_float64():
    u = torch.randn(5, 2, dtype=torch.float64)
    x, log_lambda = g.inverse_stereographic(u, "south")
    outputs = [x, log_lambda, g.stereographic(x, "south"), g.rotation_to(x), *g.tangent_basis(x),
               g.vmf_log_prob(x, x[0], 2.0), g.vmf_log_density(x[:, 2], 1e4), g.vmf_log_normalizer(torch.ones(2, dtype=torch.float64)),
               *g.xyz_to_latlon(x)]
    assert all(t.dtype == torch.float64 for t in outputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_functions_keep_low_precision_dtypes(dtype):
    u = torch.randn(5, 2).to(dtype)
    x, log_lambda = g.inverse_stereographic(u)
    assert x.dtype == log_lambda.dtype == g.stereographic(x).dtype == dtype
    assert g.vmf_log_prob(x, [0.0, 0.0, 1.0], 8.0).dtype == dtype
    assert g.vmf_log_density(x[:, 0], 1e4, dim=5).dtype == dtype
    assert g.rotation_to(x).dtype == dtype
    # the normaliser is evaluated in float64 and rounded once
    ref = g.vmf_log_density(x[:, 2].double(), 8.0)
    torch.testing.assert_close(g.vmf_log_density(x[:, 2], 8.0).double(), ref, rtol=0,
                               atol=8 * torch.finfo(dtype).eps * float(ref.abs().max()))


def test_functions_create_nothing_on_the_default_device():
    # meta tensors have no data: any tensor made on the CPU and mixed in fails or shows up as a CPU output
    u = torch.empty(5, 2, device="meta", dtype=torch.float64)
    x, log_lambda = g.inverse_stereographic(u)
    assert x.device.type == log_lambda.device.type == "meta"
    assert g.stereographic(x, "south").device.type == "meta"
    assert g.vmf_log_prob(x, [0.0, 0.0, 1.0], 8.0).device.type == "meta"
    assert g.vmf_log_density(x[:, 0], torch.tensor(3.0, device="meta")).device.type == "meta"
    assert g.vmf_log_normalizer(torch.empty(3, device="meta"), 2).device.type == "meta"
    assert all(t.device.type == "meta" for t in g.tangent_basis(x))
    assert g.latlon_to_xyz(torch.empty(4, device="meta"), 10.0).device.type == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_functions_stay_on_cuda():
    d = torch.randn(64, 3, device="cuda", dtype=torch.float64)
    r = g.rotation_to(d)
    assert r.device.type == "cuda"
    torch.testing.assert_close(r.cpu(), g.rotation_to(d.cpu()), rtol=0, atol=1e-12)
    x, log_lambda = g.inverse_stereographic(torch.randn(64, 2, device="cuda"), "south")
    assert x.is_cuda and log_lambda.is_cuda and g.stereographic(x, "south").is_cuda
    assert g.vmf_log_prob(x, [0.0, 0.0, 1.0], 8.0).is_cuda
    assert g.vmf_log_normalizer(torch.tensor([1.0, 2.0], device="cuda"), 5).is_cuda
    assert all(t.is_cuda for t in g.tangent_basis(x)) and g.latlon_to_xyz(x[:, 0], 3.0).is_cuda
    assert all(t.is_cuda for t in g.xyz_to_latlon(x))
    lp = Spherical().log_prob(4 * x.double())
    assert lp.is_cuda
    torch.testing.assert_close(lp.cpu(), Spherical().log_prob(4 * x.double().cpu()))
