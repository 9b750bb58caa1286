from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vqflows import datasets
from vqflows.datasets import Curve, Dataset, Spherical, Splits
from vqflows.datasets.manifolds import sample_vmf

NAMES = datasets.names()
CURVES = [n for n in NAMES if isinstance(datasets.get(n), Curve)]
PLANAR = [n for n in NAMES if datasets.get(n).features == 2]

# Written out again from REFERENCE.md §1 (not imported), so the oracle is checked against the
# formulas rather than against itself: name -> (θ range, branches γ_b(θ), s, σ).
_s, _c = np.sin, np.cos
FORMULAS = {
    "helix": ((0, 6 * math.pi), [lambda t: (t, _c(t), _s(t))], 1.0, 0.05),
    "lissajous": ((-math.pi, math.pi), [lambda t: (_s(2 * t), _c(t), _c(2 * t))], 4.0, 0.1),
    "knotted": ((-math.pi, math.pi),
                [lambda t: (_s(t) + 2 * _s(2 * t), _c(t) - 2 * _c(2 * t), _s(3 * t))], 4.0, 0.1),
    "twisted-eight": ((-math.pi, math.pi),
                      [lambda t: (_s(t), _c(t), 0 * t), lambda t: (2 + _s(t), 0 * t, _c(t))], 4.0, 0.1),
    "interlocked-circles": ((-math.pi, math.pi),
                            [lambda t: (_s(t), _c(t), 0 * t), lambda t: (1 + _s(t), 0 * t, _c(t))], 4.0, 0.1),
    "disjoint-circles": ((-math.pi, math.pi),
                         [lambda t: (-2 + _s(t), -1 + _s(t), -1 + _s(t)),
                          lambda t: (2 + _s(t), 1 + 2 * _c(t), 1 + 2 * _c(t))], 2.0, 0.05),
    "moons": ((0, math.pi),
              [lambda t: (_c(t) - 0.5, _s(t) - 0.25), lambda t: (0.5 - _c(t), 0.25 - _s(t))], 1.0, 0.1),
}

# REFERENCE.md §1: E[log p] estimated over 2,500 points.
REFERENCE_LOG_LIKELIHOOD = {
    "spherical": -3.72, "helix": -0.10, "lissajous": -2.20, "knotted": -3.01,
    "twisted-eight": -2.12, "interlocked-circles": -2.14, "disjoint-circles": -0.02,
}


def test_registry():
    assert NAMES[:7] == list(REFERENCE_LOG_LIKELIHOOD)
    assert {"rings"} <= set(PLANAR) and len(PLANAR) >= 2
    assert set(FORMULAS) == set(CURVES)
    for name, cls in datasets.REGISTRY.items():
        ds = datasets.get(name)
        assert isinstance(ds, cls) and issubclass(cls, Dataset)
        assert ds.name == name and ds.features in (2, 3)


def test_register_rejects_a_taken_name():
    class Other(Dataset):
        name, features, manifold_dim = "helix", 3, 1

    with pytest.raises(ValueError, match="'helix' is already registered"):
        datasets.register(Other)
    assert datasets.REGISTRY["helix"] is datasets.Helix


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_seeded(name):
    ds = datasets.get(name)
    x = ds.sample(64, seed=3)
    assert x.dtype == torch.float32 and x.shape == (64, ds.features)
    assert torch.isfinite(x).all()
    assert torch.equal(x, ds.sample(64, seed=3))
    assert not torch.equal(x, ds.sample(64, seed=4))


@pytest.mark.parametrize("name", NAMES)
def test_load_splits(name):
    s = datasets.load(name, n=200, seed=1)
    ds = s.dataset
    assert isinstance(s, Splits) and s.name == name and isinstance(ds, datasets.REGISTRY[name])
    assert [tuple(p.shape) for p in (s.train, s.val, s.test)] == [(100, ds.features), (50, ds.features), (50, ds.features)]
    assert all(p.dtype == torch.float32 for p in (s.train, s.val, s.test))
    again, other = datasets.load(name, n=200, seed=1), datasets.load(name, n=200, seed=2)
    assert all(torch.equal(a, b) for a, b in zip((s.train, s.val, s.test), (again.train, again.val, again.test)))
    assert not torch.equal(s.test, other.test)
    # No point shared between splits (θ is drawn at random, not from a grid).
    everything = torch.cat([s.train, s.val, s.test])
    assert torch.unique(everything, dim=0).shape[0] == 200


def test_load_default_sizes_and_fractions():
    s = datasets.load("helix", n=10_000, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (5_000, 2_500, 2_500)
    assert s.features == 3
    s = datasets.load("helix", seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (5_000, 2_500, 2_500)
    s = datasets.load("rings", n=1_000, seed=0, splits=(0.8, 0.1, 0.1))
    assert (len(s.train), len(s.val), len(s.test)) == (800, 100, 100)
    assert datasets.split_sizes(11, (0.5, 0.25, 0.25)) == (6, 3, 2)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_shape_and_inputs(name):
    ds = datasets.get(name)
    x = ds.sample(20, seed=0)
    lp = ds.log_prob(x)
    assert lp.dtype == torch.float64 and lp.shape == (20,) and torch.isfinite(lp).all()
    assert torch.allclose(ds.log_prob(x.numpy()), lp)
    assert torch.allclose(ds.log_prob(x.double()), lp)
    with pytest.raises(ValueError, match=rf"x: expected shape \(N, {ds.features}\), got \(20, {ds.features + 1}\)"):
        ds.log_prob(torch.zeros(20, ds.features + 1))
    with pytest.raises(ValueError, match="x: expected finite values"):
        ds.log_prob(torch.full((2, ds.features), float("nan")))


@pytest.mark.parametrize("name", CURVES)
def test_curve_oracle_matches_monte_carlo(name):
    """p(x) ≈ mean over θ ~ p(θ) and branches of N(x; s γ_b(θ), σ² I), from the formulas above."""
    (lo, hi), branches, s, sigma = FORMULAS[name]
    ds = datasets.get(name)
    x = ds.sample(6, seed=11).double().numpy()
    rng = np.random.default_rng(0)
    m = 200_000
    dens = []
    for gamma in branches:
        mu = s * np.stack(gamma(rng.uniform(lo, hi, m)), axis=-1)  # (M, D)
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        dens.append(np.exp(-d2 / (2 * sigma**2)) / (2 * math.pi * sigma**2) ** (ds.features / 2))
    dens = np.concatenate(dens, axis=1)  # equal branch weights: pool the draws
    mean = dens.mean(1)
    rel_se = dens.std(1) / math.sqrt(dens.shape[1]) / mean
    assert (rel_se < 0.05).all()  # the check has power: a 5-σ band narrower than ±25%
    got = ds.log_prob(x).numpy()
    assert np.all(np.abs(got - np.log(mean)) < 5 * rel_se + 1e-3), (got, np.log(mean), rel_se)


@pytest.mark.parametrize("name", CURVES)
def test_curve_quadrature_converged(name):
    ds = datasets.get(name)
    finer = type(ds)(nodes=2 * ds.nodes - 1)  # halves the spacing, keeping every node
    x = ds.sample(500, seed=5)
    assert (ds.log_prob(x) - finer.log_prob(x)).abs().max() < 0.01
    coarse = type(ds)(nodes=ds.nodes // 8)
    assert (coarse.log_prob(x) - finer.log_prob(x)).abs().max() > 1e-3  # the comparison can fail


def test_spherical_direction_density_matches_scipy():
    ds = Spherical()
    u = torch.nn.functional.normalize(ds.sample(50, seed=2).double(), dim=-1)
    expected = np.log(np.mean([stats.vonmises_fisher(np.array(m), 8.0).pdf(u.numpy()) for m in
                               [(0, 0, 1), (-1, 0, 0), (0, 0, -1)]], axis=0))
    assert np.allclose(ds.direction_log_prob(u).numpy(), expected, atol=1e-10)
    # Radial factor N(‖x‖; 4, 0.1²) / ‖x‖² on top of the direction density.
    x = 4.1 * u
    radial = stats.norm(4.0, 0.1).logpdf(4.1) - 2 * math.log(4.1)
    assert np.allclose(ds.log_prob(x).numpy(), expected + radial, atol=1e-10)


def _sphere_rule(n_cos: int = 64, n_phi: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors and area weights: Gauss–Legendre in cos θ times the periodic rule in φ."""
    z, wz = np.polynomial.legendre.leggauss(n_cos)
    phi = 2 * math.pi * np.arange(n_phi) / n_phi
    z, phi = np.meshgrid(z, phi, indexing="ij")
    rho = np.sqrt(1 - z**2)
    u = np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1).reshape(-1, 3)
    w = np.repeat(wz, n_phi) * 2 * math.pi / n_phi
    return torch.from_numpy(u), torch.from_numpy(w)


def test_spherical_density_integrates_to_one():
    ds = Spherical()
    u, w = _sphere_rule()
    assert abs(float((ds.direction_log_prob(u).exp() * w).sum()) - 1) < 1e-6
    # The full density over R³ in polar coordinates, radius by Gauss–Legendre on [3.3, 4.7].
    r, wr = np.polynomial.legendre.leggauss(40)
    r, wr = torch.from_numpy(0.7 * r + 4), torch.from_numpy(0.7 * wr)
    x = (r[:, None, None] * u[None]).reshape(-1, 3)
    p = ds.log_prob(x).exp().reshape(len(r), len(u))
    total = float(((p * r[:, None] ** 2 * wr[:, None]).sum(0) * w).sum())
    assert abs(total - 1) < 1e-4


def test_vmf_sampler_is_exact():
    rng = np.random.default_rng(0)
    mean = np.tile([[0.6, 0.0, 0.8]], (40_000, 1))
    u = sample_vmf(mean, 8.0, rng)
    assert np.allclose(np.linalg.norm(u, axis=1), 1)
    # E[μᵀu] = coth κ − 1/κ, and the cosine's CDF (e^{κw} − e^{−κ}) / (e^κ − e^{−κ}) per KS.
    w = u @ mean[0]
    assert abs(w.mean() - (1 / math.tanh(8) - 1 / 8)) < 4 * w.std() / math.sqrt(len(w))
    cdf = lambda t: np.expm1(8 * (t + 1)) / np.expm1(16)  # noqa: E731
    assert stats.kstest(w, cdf).pvalue > 1e-3
    # Azimuth around μ is uniform: the tangent component averages to zero.
    tangent = u - w[:, None] * mean[0]
    assert np.abs(tangent.mean(0)).max() < 4 * tangent.std(0).max() / math.sqrt(len(w))


def _planar_grid(ds: Dataset, step: float = 0.02):
    half = float(ds.sample(2_000, seed=0).abs().max()) + 1.0
    ticks = torch.arange(-half, half, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(ticks, ticks)
    return grid, ds.log_prob(grid).exp() * step**2


@pytest.mark.parametrize("name", PLANAR)
def test_planar_density_integrates_to_one(name):
    ds = datasets.get(name)
    grid, mass = _planar_grid(ds)
    assert abs(float(mass.sum()) - 1) < 0.01
    # Sampler and density agree on the mass of off-centre quadrants.
    x = ds.sample(20_000, seed=1).double()
    for sx in (-1, 1):
        for sy in (-1, 1):
            inside = lambda p: (sx * (p[:, 0] - 0.3) > 0) & (sy * (p[:, 1] - 0.2) > 0)  # noqa: E731
            grid_mass = float(mass[inside(grid)].sum())
            frac = float(inside(x).double().mean())
            assert abs(frac - grid_mass) < 4 * math.sqrt(grid_mass * (1 - grid_mass) / len(x)) + 0.005


@pytest.mark.parametrize("name", list(REFERENCE_LOG_LIKELIHOOD))
def test_oracle_log_likelihood_matches_reference(name):
    ds = datasets.get(name)
    x = ds.sample(2_500, seed=0)
    lp = ds.log_prob(x)
    # ±0.1 is over 3 standard errors of the 2,500-point mean (and twice the reference's ±0.05).
    assert float(lp.std()) / math.sqrt(len(lp)) < 0.033
    estimate = ds.oracle_log_likelihood(n=2_500, seed=0)
    assert abs(estimate - REFERENCE_LOG_LIKELIHOOD[name]) < 0.1
    assert abs(estimate - float(lp.mean())) < 1e-3  # float32 rounding of x only


def test_info():
    rows = datasets.info(n=40, seed=0)
    assert [r["name"] for r in rows] == NAMES
    for r in rows:
        s = datasets.load(r["name"], n=40, seed=0)
        assert (r["n"], r["train"], r["val"], r["test"]) == (40, 20, 10, 10)
        assert r["features"] == s.features
        assert math.isclose(r["oracle"], float(s.dataset.log_prob(s.test).mean()))


# Files


@pytest.fixture
def points():
    return np.random.default_rng(0).normal(size=(40, 3))


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_load_file(tmp_path, points, suffix):
    path = tmp_path / f"cloud{suffix}"
    if suffix == ".npy":
        np.save(path, points)
    else:
        path.write_text("# made up\nx,y,z\n" + "\n".join(",".join(map(str, row.tolist())) + "  # a row" for row in points) + "\n")
    s = datasets.load(str(path), seed=0)
    assert s.dataset is None and s.name == "cloud"
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)
    assert s.train.dtype == torch.float32
    rows = torch.cat([s.train, s.val, s.test])
    expected = torch.from_numpy(points).float()
    # A permutation of the file's rows, seeded.
    assert torch.equal(rows[rows[:, 0].argsort()], expected[expected[:, 0].argsort()])
    assert not torch.equal(rows, expected)
    assert torch.equal(datasets.load(path, seed=0).test, s.test)
    assert not torch.equal(datasets.load(path, seed=1).test, s.test)
    sub = datasets.load(path, n=20, seed=0, splits=(0.5, 0.25, 0.25))
    assert (len(sub.train), len(sub.val), len(sub.test)) == (10, 5, 5)


def test_csv_without_header(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(f"{i}, {2 * i}" for i in range(12)))
    assert torch.equal(datasets.read_points(path)[:, 1], 2 * torch.arange(12.0))


def test_unknown_name():
    with pytest.raises(ValueError) as e:
        datasets.get("foo")
    assert str(e.value) == "dataset: expected one of " + ", ".join(map(repr, NAMES)) + ", got 'foo'"
    assert str(e.value).startswith("dataset: expected one of 'spherical', 'helix'")
    with pytest.raises(ValueError, match="dataset: expected one of 'spherical'.* or a path to a .npy, .csv or .txt file, got 'foo'"):
        datasets.load("foo")


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="nope.npy: expected an existing .npy, .csv or .txt file"):
        datasets.load(str(tmp_path / "nope.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(30))
    with pytest.raises(ValueError, match=r"flat.npy: expected shape \(N, D\), got \(30,\)"):
        datasets.load(tmp_path / "flat.npy")
    bad = np.ones((30, 2))
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="nan.npy: expected finite values, got 1 row"):
        datasets.load(tmp_path / "nan.npy")
    (tmp_path / "inf.csv").write_text("a,b\n" + "1,2\n" * 20 + "1e40,0\n")  # overflows float32
    with pytest.raises(ValueError, match="inf.csv: expected finite values"):
        datasets.load(tmp_path / "inf.csv")
    np.save(tmp_path / "few.npy", np.ones((9, 2)))
    with pytest.raises(ValueError, match="few.npy: expected at least 10 points, got 9"):
        datasets.load(tmp_path / "few.npy")
    np.save(tmp_path / "some.npy", np.ones((50, 2)))
    with pytest.raises(ValueError, match="some.npy: expected at least 100 points, got 50"):
        datasets.load(tmp_path / "some.npy", min_points=100)
    with pytest.raises(ValueError, match="n: expected at most the 50 rows"):
        datasets.load(tmp_path / "some.npy", n=60)
    (tmp_path / "ragged.csv").write_text("1,2\n" * 20 + "3\n")
    with pytest.raises(ValueError, match="ragged.csv: line 21: expected 2 comma-separated values, got 1"):
        datasets.load(tmp_path / "ragged.csv")
    (tmp_path / "points.dat").write_text("1,2\n" * 20)
    with pytest.raises(ValueError, match=r"points.dat: expected a file ending in .npy, .csv or .txt, got '.dat'"):
        datasets.load(tmp_path / "points.dat")
    (tmp_path / "ragged.txt").write_text("1 2\n" * 20 + "3\n")
    with pytest.raises(ValueError, match="ragged.txt: line 21: expected 2 space-separated values, got 1"):
        datasets.load(tmp_path / "ragged.txt")


def test_text_files(tmp_path):
    """``.txt`` holds numbers separated by spaces (as ``np.savetxt`` writes) or commas, with an optional header."""
    x = np.arange(40.0).reshape(20, 2)
    np.savetxt(tmp_path / "spaces.txt", x)
    np.savetxt(tmp_path / "commas.txt", x, delimiter=",", header="a,b", comments="")
    (tmp_path / "tabs.txt").write_text("# made by hand\nx y\n" + "".join(f"{a}\t{b}\n" for a, b in x))
    for name in ("spaces.txt", "commas.txt", "tabs.txt"):
        assert torch.equal(datasets.read_points(tmp_path / name), torch.from_numpy(x).float()), name


def test_bad_sizes():
    with pytest.raises(ValueError, match="n: expected at least 10 points, got 5"):
        datasets.load("helix", n=5)
    with pytest.raises(ValueError, match="n: expected enough points for non-empty splits"):
        datasets.load("helix", n=2, min_points=1)
    with pytest.raises(ValueError, match="splits: expected three fractions in"):
        datasets.load("helix", n=100, splits=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="splits: expected three fractions"):
        datasets.load("helix", n=100, splits=(0.5, 0.5))
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        datasets.get("helix").sample(0)
    with pytest.raises(ValueError, match="seed: expected a non-negative integer"):
        datasets.get("helix").sample(3, seed=-1)
