from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vqflows.geometry import sample_vmf
from vqflows.vmf import (
    KAPPA_MAX,
    VMFMixture,
    fit_vmf_mixture,
    vmf_log_normalizer,
    vmf_log_prob,
    vmf_sample,
)

LOG_4PI = math.log(4 * math.pi)


def unit(*v) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def sphere_integral(log_density, n_theta: int, n_phi: int, chunk: int = 100) -> float:
    """Midpoint rule in (θ polar, φ azimuth) with the area element sin θ dθ dφ."""
    d_theta, d_phi = math.pi / n_theta, 2 * math.pi / n_phi
    theta = (torch.arange(n_theta, dtype=torch.float64) + 0.5) * d_theta
    phi = (torch.arange(n_phi, dtype=torch.float64) + 0.5) * d_phi
    total = 0.0
    for rows in torch.split(theta, chunk):
        t, p = torch.meshgrid(rows, phi, indexing="ij")
        x = torch.stack([torch.sin(t) * torch.cos(p), torch.sin(t) * torch.sin(p), torch.cos(t)], -1).reshape(-1, 3)
        total += float((log_density(x).exp() * torch.sin(t).reshape(-1)).sum())
    return total * d_theta * d_phi


def mean_cosine(kappa: float) -> float:
    """E[μᵀx] = coth κ - 1/κ."""
    return kappa / 3 if kappa < 1e-4 else 1 / math.tanh(kappa) - 1 / kappa


def three_caps(n: int, seed: int):
    means = torch.stack([unit(0, 0, 1), unit(1, 0, 0.2), unit(-0.5, -0.8, -0.3)])
    kappas = torch.tensor([20.0, 50.0, 200.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    truth = VMFMixture(weights, means, kappas)
    return truth, truth.sample(n, seed=seed)


# ---------------------------------------------------------------- single vMF


@pytest.mark.parametrize("kappa", [0.0, 1e-9, 0.7, 12.0, 300.0])
def test_vmf_integrates_to_one(kappa):
    mu = unit(0.3, -0.5, 0.8)
    assert sphere_integral(lambda x: vmf_log_prob(x, mu, kappa), 200, 400) == pytest.approx(1.0, abs=0.01)


def test_vmf_large_kappa_integrates_to_one():
    mu = unit(0.6, 0.2, -0.4)
    assert sphere_integral(lambda x: vmf_log_prob(x, mu, 1e4), 1000, 2000) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("kappa", [0.01, 1.0, 7.5, 40.0])
def test_vmf_log_prob_matches_textbook_formula(kappa):
    mu = unit(1, 2, 2)
    x = vmf_sample(unit(0, 1, 0), 1.0, 50, rng=1)
    expected = math.log(kappa / (4 * math.pi * math.sinh(kappa))) + kappa * (x @ mu)
    torch.testing.assert_close(vmf_log_prob(x, mu, kappa), expected, rtol=1e-12, atol=1e-12)


def test_vmf_log_prob_stable_at_small_and_large_kappa():
    mu = unit(0, 0, 1)
    x = torch.stack([mu, unit(1, 0, 0), -mu])
    for kappa in (0.0, 1e-300, 1e-12, 1e-7):
        torch.testing.assert_close(vmf_log_prob(x, mu, kappa), torch.full((3,), -LOG_4PI, dtype=torch.float64),
                                   rtol=0, atol=1e-6)
    lp = vmf_log_prob(x, mu, 1e4)
    assert torch.isfinite(lp).all()
    assert float(lp[0]) == pytest.approx(math.log(1e4 / (2 * math.pi)), abs=1e-12)
    assert float(lp[1]) == pytest.approx(math.log(1e4 / (2 * math.pi)) - 1e4, rel=1e-12)
    assert float(lp[2]) == pytest.approx(math.log(1e4 / (2 * math.pi)) - 2e4, rel=1e-12)


def test_vmf_log_normalizer_gradient_is_finite_and_correct():
    kappa = torch.tensor([0.0, 1e-9, 0.5, 30.0, 1e4], dtype=torch.float64, requires_grad=True)
    vmf_log_normalizer(kappa).sum().backward()
    assert torch.isfinite(kappa.grad).all()
    # d/dκ [log κ - log(1 - e^{-2κ})] = 1/κ - 2/(e^{2κ} - 1) = 1 - A(κ) ... evaluated for κ = 0.5 and 30
    for i in (2, 3):
        k = float(kappa[i].detach())
        assert float(kappa.grad[i]) == pytest.approx(1 / k - 2 / math.expm1(2 * k), rel=1e-9)


def test_vmf_log_prob_batched_over_components():
    mus = torch.stack([unit(1, 0, 0), unit(0, 1, 1), unit(-1, -1, 0.5)])
    kappas = torch.tensor([0.0, 3.0, 500.0], dtype=torch.float64)
    x = vmf_sample(unit(0, 0, 1), 2.0, 20, rng=0)
    table = vmf_log_prob(x, mus, kappas)
    assert table.shape == (20, 3)
    for k in range(3):
        torch.testing.assert_close(table[:, k], vmf_log_prob(x, mus[k], kappas[k]))


def test_vmf_log_prob_keeps_float32():
    x = vmf_sample(unit(0, 0, 1), 2.0, 5, rng=0).float()
    assert vmf_log_prob(x, unit(0, 0, 1), 2.0).dtype == torch.float32


@pytest.mark.parametrize("kappa", [0.0, 1e-6, 0.3, 4.0, 60.0, 1e4])
def test_vmf_sample_matches_density(kappa):
    mu = unit(-0.2, 0.9, 0.4)
    n = 100_000
    x = vmf_sample(mu, kappa, n, rng=np.random.default_rng(7))
    assert x.shape == (n, 3) and x.dtype == torch.float64
    torch.testing.assert_close(x.norm(dim=1), torch.ones(n, dtype=torch.float64))
    w = (x @ mu).numpy()
    # Mean resultant length E[μᵀx] = coth κ - 1/κ, within five standard errors.
    assert abs(w.mean() - mean_cosine(kappa)) < 5 * w.std() / math.sqrt(n) + 1e-12
    # The law of w: F(w) = (1 - e^{-κ(w+1)}) e^{κ(w-1)} / (1 - e^{-2κ}), uniform on [-1, 1] at κ = 0.
    def cdf(t):
        if kappa == 0.0:
            return (t + 1) / 2
        return -np.expm1(-kappa * (t + 1)) * np.exp(kappa * (t - 1)) / -np.expm1(-2 * kappa)

    assert stats.kstest(w, cdf).pvalue > 1e-3
    # The azimuth around μ is uniform: the component orthogonal to μ averages to zero.
    perp = x - torch.from_numpy(w)[:, None] * mu
    assert float(perp.mean(0).norm()) < 5 * math.sqrt(float((perp**2).sum(1).mean()) / n)


def test_samplers_are_the_geometry_sampler():
    mu = unit(0.3, -0.5, 0.8)
    x = vmf_sample(mu, 7.0, 50, rng=np.random.default_rng(3))
    assert np.array_equal(x.numpy(), sample_vmf(np.tile(mu.numpy(), (50, 1)), 7.0, np.random.default_rng(3)))
    # a mixture draws its counts, then each component's points, then a permutation, from one stream
    rng = np.random.default_rng(4)
    counts = rng.multinomial(60, [0.25, 0.75])
    means = torch.stack([mu, unit(1, 0, 0)])
    parts = [sample_vmf(np.tile(means[k].numpy(), (counts[k], 1)), kappa, rng) for k, kappa in enumerate((2.0, 0.5))]
    expected = np.concatenate(parts)[rng.permutation(60)]
    assert np.array_equal(VMFMixture([0.25, 0.75], means, [2.0, 0.5]).sample(60, seed=4).numpy(), expected)


def test_vmf_sample_is_seeded():
    mu = unit(0, 0, 1)
    torch.testing.assert_close(vmf_sample(mu, 3.0, 10, rng=4), vmf_sample(mu, 3.0, 10, rng=4))
    assert not torch.equal(vmf_sample(mu, 3.0, 10, rng=4), vmf_sample(mu, 3.0, 10, rng=5))


# ---------------------------------------------------------------- validation


def test_inputs_are_validated():
    mu = unit(0, 0, 1)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\), got \(4, 2\)"):
        vmf_log_prob(torch.zeros(4, 2), mu, 1.0)
    with pytest.raises(ValueError, match="x: expected unit vectors"):
        vmf_log_prob(torch.full((2, 3), 0.9), mu, 1.0)
    with pytest.raises(ValueError, match="x: expected finite values"):
        vmf_log_prob(torch.tensor([[float("nan"), 0.0, 1.0]]), mu, 1.0)
    with pytest.raises(ValueError, match="kappa: expected finite values >= 0"):
        vmf_log_prob(mu[None], mu, -1.0)
    with pytest.raises(ValueError, match=r"mu: expected shape \(3,\), got \(2,\)"):
        vmf_sample(torch.tensor([1.0, 0.0]), 1.0, 3)
    with pytest.raises(ValueError, match="mu: expected unit vectors"):
        vmf_sample(torch.tensor([2.0, 0.0, 0.0]), 1.0, 3)
    with pytest.raises(ValueError, match=r"kappa: expected shape \(2,\)"):
        vmf_log_prob(mu[None], torch.stack([mu, mu]), torch.ones(3))
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        vmf_sample(mu, 1.0, 0)
    with pytest.raises(ValueError, match="weights: expected values adding to 1"):
        VMFMixture([0.5, 0.6], torch.stack([mu, mu]), [1.0, 1.0])
    with pytest.raises(ValueError, match="components: expected an integer >= 1"):
        VMFMixture.fit(vmf_sample(mu, 1.0, 10, rng=0), components=0)
    with pytest.raises(ValueError, match="x: expected at least components=20 points, got 10"):
        VMFMixture.fit(vmf_sample(mu, 1.0, 10, rng=0), components=20)
    with pytest.raises(ValueError, match="seed: expected a numpy Generator, a non-negative integer seed or None"):
        VMFMixture.fit(vmf_sample(mu, 1.0, 10, rng=0), components=2, seed=-1)
    with pytest.raises(ValueError, match="kappa_max: expected a finite positive number"):
        VMFMixture.fit(vmf_sample(mu, 1.0, 10, rng=0), components=2, kappa_max=0.0)
    with pytest.raises(ValueError, match="init: expected one of 'kmeans', 'random'"):
        VMFMixture.fit(vmf_sample(mu, 1.0, 10, rng=0), components=2, init="spectral")


# ---------------------------------------------------------------- mixture


def test_mixture_log_prob_is_weighted_sum():
    truth, x = three_caps(50, seed=0)
    manual = sum(w * vmf_log_prob(x, m, k).exp() for w, m, k in zip(truth.weights, truth.means, truth.kappas))
    torch.testing.assert_close(truth.log_prob(x), manual.log())


@pytest.mark.parametrize("init", ["kmeans", "random"])
@pytest.mark.parametrize("components", [3, 8])
def test_em_increases_likelihood_monotonically(init, components):
    # Overlapping caps, so that EM needs many steps rather than converging at once.
    means = torch.stack([unit(0, 0, 1), unit(0.5, 0, 1), unit(0, 0.6, 1)])
    truth = VMFMixture([0.4, 0.3, 0.3], means, [10.0, 15.0, 30.0])
    x = truth.sample(1500, seed=1)
    model = VMFMixture.fit(x, components=components, iters=100, seed=3, init=init, tol=0.0)
    history = np.asarray(model.history)
    assert len(history) > 20
    assert np.diff(history).min() > -1e-10
    assert history[-1] > history[0]
    assert history[-1] == pytest.approx(float(model.log_prob(x).mean()), abs=1e-9)


def test_em_recovers_three_components():
    truth, x = three_caps(3000, seed=2)
    model = VMFMixture.fit(x, components=3, seed=0)
    assert model.components == 3
    angle = torch.arccos((model.means @ truth.means.T).clamp(-1, 1))  # (fitted, true)
    match = angle.argmin(0)
    assert sorted(match.tolist()) == [0, 1, 2]
    assert float(angle.min(0).values.max()) < 0.05
    torch.testing.assert_close(model.weights[match], truth.weights, rtol=0, atol=0.04)
    torch.testing.assert_close(model.kappas[match], truth.kappas, rtol=0.2, atol=0)
    # The fit is at least as likely as the truth on its own training data.
    assert float(model.log_prob(x).mean()) >= float(truth.log_prob(x).mean()) - 1e-9


def test_fitted_mixture_with_concentrated_component_integrates_to_one():
    rng = np.random.default_rng(0)
    spread = vmf_sample(unit(0.2, 0.7, -0.3), 5.0, 300, rng=rng)
    tight = vmf_sample(unit(-0.6, 0.1, 0.5), 5e3, 100, rng=rng)
    repeats = unit(0.9, -0.3, 0.2).expand(40, 3)  # duplicated events drive κ to the cap
    x = torch.cat([spread, tight, repeats])
    model = VMFMixture.fit(x, components=4, seed=0)
    assert float(model.kappas.max()) >= 1e3
    assert float(model.kappas.max()) <= KAPPA_MAX
    assert sphere_integral(model.log_prob, 1000, 2000) == pytest.approx(1.0, abs=0.01)


def test_fit_is_seeded_and_sample_follows_weights():
    truth, x = three_caps(800, seed=3)
    a = VMFMixture.fit(x, components=3, seed=11)
    b = VMFMixture.fit(x, components=3, seed=11)
    torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
    torch.testing.assert_close(a.kappas, b.kappas, rtol=0, atol=0)
    n = 40_000
    y = truth.sample(n, seed=5)
    torch.testing.assert_close(y, truth.sample(n, seed=5))
    torch.testing.assert_close(y.norm(dim=1), torch.ones(n, dtype=torch.float64))
    # The caps barely overlap, so the nearest mean identifies the component.
    counts = torch.bincount((y @ truth.means.T).argmax(1), minlength=3).double() / n
    torch.testing.assert_close(counts, truth.weights, rtol=0, atol=0.01)


def test_save_load_round_trip(tmp_path):
    _, x = three_caps(200, seed=4)
    model = VMFMixture.fit(x, components=5, iters=50, seed=0)
    model.save(tmp_path / "m.json")
    loaded = VMFMixture.load(tmp_path / "m.json")
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    for bad in ("[1, 2]", '{"kind": "vmf_mixture", "weights": [1.0]}'):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ValueError, match="expected a saved vMF mixture with weights, means, kappas"):
            VMFMixture.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not found"):
        VMFMixture.load(tmp_path / "missing.json")


def test_fit_vmf_mixture_selects_on_validation():
    _, x = three_caps(1200, seed=6)
    sel = fit_vmf_mixture(x[:900], x[900:], components=(1, 3, 5000), seed=0)
    assert set(sel.val_nll) == {1, 3}  # K above the training size is skipped
    assert sel.components == 3
    assert sel.val_nll[3] < sel.val_nll[1]
    assert sel.val_nll[3] == pytest.approx(-float(sel.model.log_prob(x[900:]).mean()))
    with pytest.raises(ValueError, match="components: expected at least one K <= 900"):
        fit_vmf_mixture(x[:900], x[900:], components=(1000,))


def test_uniform_mixture_scores_log_4pi():
    model = VMFMixture([1.0], unit(0, 0, 1)[None], [0.0])
    x = vmf_sample(unit(1, 0, 0), 3.0, 10, rng=0)
    torch.testing.assert_close(model.log_prob(x), torch.full((10,), -LOG_4PI, dtype=torch.float64))
