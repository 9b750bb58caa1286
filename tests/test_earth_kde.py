"""The vMF kernel density, the exact vMF charts and the VQ-Flow that starts at a kernel density."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vqflows.datasets.earth import latlon_to_xyz, load_earth
from vqflows.flows.sphere import VMFChartFlow, sphere_quadrature
from vqflows.geometry import rotation_to
from vqflows.kernel_flow import fit_kernel_flow, kernel_vqflow
from vqflows.vmf import VMFMixture, vmf_sample
from vqflows.vmf_kde import (
    KDE_FLOORS,
    KDE_KAPPAS,
    VMFKernelDensity,
    adaptive_kappas,
    fit_vmf_kde,
    leave_one_out_log_density,
)

DATA_DIR = Path(os.environ.get("VQFLOWS_EARTH_DIR", "/work/shared/data/earth"))
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"earth data not found in {DATA_DIR}")
LOG_4PI = math.log(4 * math.pi)


def caps(n: int, seed: int) -> torch.Tensor:
    """Points from three vMF caps of different spreads (one dense, one wide), in random order."""
    rng = np.random.default_rng(seed)
    means = latlon_to_xyz(np.array([35.0, -10.0, 60.0]), np.array([140.0, -75.0, 179.0]))
    parts = [vmf_sample(torch.from_numpy(mu), kappa, n // 3, rng=rng) for mu, kappa in zip(means, (400.0, 60.0, 15.0))]
    x = torch.cat(parts)
    return x[torch.from_numpy(rng.permutation(len(x)))]


def direct_kde(x: torch.Tensor, centres: torch.Tensor, kappa: np.ndarray, floor: float) -> np.ndarray:
    """``(1 - w) (1/N) Σ_i κ_i / (4π sinh κ_i) e^{κ_i c_iᵀ x} + w / 4π`` in plain NumPy (moderate κ only)."""
    cos = x.numpy() @ centres.numpy().T
    dens = (kappa / (4 * np.pi * np.sinh(kappa)) * np.exp(kappa * cos)).mean(1)
    return np.log((1 - floor) * dens + floor / (4 * np.pi))


# ------------------------------------------------------------------------------ the kernel density


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_kernel_density_is_the_direct_sum(floor):
    x, centres = caps(90, seed=1), caps(60, seed=2)
    kappa = np.linspace(3.0, 300.0, len(centres))
    got = VMFKernelDensity(centres, torch.from_numpy(kappa), floor=floor).log_prob(x)
    np.testing.assert_allclose(got.numpy(), direct_kde(x, centres, kappa, floor), rtol=0, atol=1e-10)
    one = VMFKernelDensity(centres, 30.0, floor=floor).log_prob(x)
    np.testing.assert_allclose(one.numpy(), direct_kde(x, centres, np.full(60, 30.0), floor), rtol=0, atol=1e-10)


def test_kernel_density_large_kappa_is_finite_and_exact():
    # at κ = 2e5 sinh overflows; at a lone centre the density is κ / 2π (1/N of it), elsewhere it underflows
    centres = torch.stack([rotation_to(torch.tensor(v, dtype=torch.float64))[:, 2]
                           for v in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0])])
    kde = VMFKernelDensity(centres, 2e5)
    np.testing.assert_allclose(kde.log_prob(centres).numpy(), math.log(2e5 / (2 * math.pi)) - math.log(3), atol=1e-12)
    assert float(VMFKernelDensity(centres, 2e5, floor=0.1).log_prob(-centres).max()) == pytest.approx(
        math.log(0.1) - LOG_4PI, abs=1e-9)


def test_kernel_density_integrates_to_one():
    kde = VMFKernelDensity(caps(30, seed=0), 50.0, floor=0.01)
    assert sphere_quadrature(kde.log_prob, 300, 600) == pytest.approx(1.0, abs=1e-8)


def test_fit_vmf_kde_chooses_on_validation():
    x = caps(600, seed=3)
    train, val = x[:450], x[450:]
    sel = fit_vmf_kde(train, val)
    assert len(sel.val_nll) == len(KDE_KAPPAS) * len(KDE_FLOORS) and sel.alpha == 0.0
    assert min(sel.val_nll, key=sel.val_nll.get) == (0.0, sel.kappa, sel.floor)
    assert -float(sel.model.log_prob(val).mean()) == pytest.approx(min(sel.val_nll.values()), abs=1e-12)
    # κ = 20 (the smallest tried) is too wide for caps of κ 400 and 60: a sharper one wins
    assert sel.kappa > KDE_KAPPAS[0]
    adaptive = fit_vmf_kde(train, val, alphas=(0.5, 1.0))
    assert {a for a, _, _ in adaptive.val_nll} == {0.0, 0.5, 1.0}
    assert min(adaptive.val_nll.values()) <= min(sel.val_nll.values())
    with pytest.raises(ValueError, match="kappas: expected one or more finite concentrations > 0"):
        fit_vmf_kde(train, val, kappas=(0.0,))
    with pytest.raises(ValueError, match=r"floors: expected one or more weights in \[0, 1\)"):
        fit_vmf_kde(train, val, floors=(1.0,))


def test_adaptive_kappas_sharpen_dense_regions():
    x = caps(300, seed=4)
    pilot = leave_one_out_log_density(x, 50.0)
    # the leave-one-out density is the kernel density of the other points
    i = 7
    rest = torch.cat([x[:i], x[i + 1:]])
    assert float(pilot[i]) == pytest.approx(float(VMFKernelDensity(rest, 50.0).log_prob(x[i:i + 1])), abs=1e-10)
    k = adaptive_kappas(x, 50.0, 0.5)
    assert torch.equal(adaptive_kappas(x, 50.0, 0.0), torch.full((300,), 50.0, dtype=torch.float64))
    # κ_i ∝ f̂(x_i) for α = 1/2 where not clipped at 1: the dense cap's kernels are the sharpest
    free = k > 1
    assert 0 < int(free.sum()) < 300 and float((k[free].log() - pilot[free]).std()) < 1e-9
    assert float(k[pilot.argmax()]) == float(k.max()) and float(k[pilot.argmin()]) == 1.0


@needs_data
def test_vmf_kde_on_volcano_is_in_the_published_range():
    """Seed 0 of the protocol: within three standard deviations of the published −3.71 ± 0.31."""
    s = load_earth("volcano", data_dir=DATA_DIR, seed=0)
    sel = fit_vmf_kde(s.train, s.val)
    test = -float(sel.model.log_prob(s.test).mean())
    assert abs(test - -3.71) < 3 * 0.31


# --------------------------------------------------------------------------- exact vMF charts


def test_vmf_chart_flow_identity_is_the_vmf_and_inverts():
    flow = VMFChartFlow(context=1).double()
    kappa = torch.tensor([20.0, 300.0, 2e5])
    y = torch.cat([vmf_sample(torch.tensor([0.0, 0.0, 1.0]), float(k), 50, rng=int(k)) for k in kappa])
    y = torch.cat([y, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.6, 0.0, -0.8]], dtype=torch.float64)])
    k = torch.cat([kappa.repeat_interleave(50), torch.tensor([50.0, 50.0, 50.0])]).double()
    c = k.log()[:, None]
    want = torch.log(k) - math.log(2 * math.pi) - torch.log(-torch.expm1(-2 * k)) + k * (y[:, 2] - 1)
    with torch.no_grad():
        got = flow.log_prob(y, c)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-9)
        z, ladj = flow(y, c)
        back, back_ladj = flow.inverse(z, c)
    np.testing.assert_allclose(back.numpy(), y.numpy(), atol=1e-8)
    np.testing.assert_allclose((ladj + back_ladj).numpy(), 0.0, atol=1e-7)


def test_trained_looking_chart_flow_still_integrates_to_one():
    torch.manual_seed(0)
    flow = VMFChartFlow(context=1, transforms=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            # away from the identity, not so far that mass leaves for the antipode, which the grid cannot resolve
            p.add_(0.02 * torch.randn_like(p))
    c = torch.full((1, 1), math.log(8.0), dtype=torch.float64)
    with torch.no_grad():
        total = sphere_quadrature(lambda x: flow.log_prob(x, c.expand(len(x), 1)), 300, 600)
    assert total == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # and it moved: no longer the vMF
        y = vmf_sample(torch.tensor([0.0, 0.0, 1.0]), 8.0, 20, rng=0)
        vmf = math.log(8.0 / (2 * math.pi * -math.expm1(-16.0))) + 8.0 * (y[:, 2] - 1)
        assert float((flow.log_prob(y, c.expand(20, 1)) - vmf).abs().max()) > 1e-3


# ------------------------------------------------------------------ the VQ-Flow holding the mixture


def test_kernel_vqflow_equals_its_mixture_at_the_start():
    """At the defaults (two coupling layers, one hidden layer of 32), before training, to 1e-6 in float64."""
    centres = caps(120, seed=5)
    kappas = torch.from_numpy(np.geomspace(20.0, 2e5, len(centres)))
    weights = torch.from_numpy(np.random.default_rng(0).dirichlet(np.ones(len(centres))))
    model = kernel_vqflow(centres, kappas, weights)
    x = torch.cat([caps(150, seed=6), centres[:10], -centres[:5]])
    want = VMFMixture(weights, centres, kappas).log_prob(x)
    with torch.no_grad():
        got = model.log_prob(x)
    assert model.K == 120 and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    assert float((got - want).abs().max()) < 1e-9  # in fact to rounding
    # and the kernel density is the mixture with equal weights
    kde = VMFKernelDensity(centres, kappas)
    with torch.no_grad():
        np.testing.assert_allclose(kernel_vqflow(centres, kappas).log_prob(x).numpy(), kde.log_prob(x).numpy(), atol=1e-9)


def test_fit_kernel_flow_is_never_below_the_kernel_density_on_validation():
    x = caps(900, seed=7)
    train, val = x[:700], x[700:]
    fit = fit_kernel_flow(train, val, epochs=4, patience=2, seed=0)
    sel = fit.selection
    # the start is the chosen kernel density, with its floor: its validation NLL is the selection's
    assert fit.initial_val_nll == pytest.approx(min(sel.val_nll.values()), abs=1e-9)
    assert fit.val_nll <= fit.initial_val_nll
    with torch.no_grad():
        lp = fit.model.log_prob(val).double()
    np.testing.assert_allclose(lp.numpy(), fit.val_log_prob.numpy(), atol=1e-9)
    best = min(-float(torch.logaddexp(lp + math.log1p(-w), torch.tensor(math.log(w) - LOG_4PI))
                      .mean()) if w else -float(lp.mean()) for w in KDE_FLOORS)
    assert best == pytest.approx(fit.val_nll, abs=1e-9)
    assert fit.model.K == len(train) and fit.epochs >= 1


def test_kernel_flow_training_improves_on_a_stretched_set():
    """Points along a great-circle arc, where round kernels are a poor fit: training moves the flow off
    the identity and ends above the kernel density on validation (exact, all charts)."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1.2, 1500)
    across = rng.normal(0, 0.004, 1500)
    x = torch.from_numpy(np.stack([np.cos(t) * np.cos(across), np.sin(t) * np.cos(across), np.sin(across)], 1))
    fit = fit_kernel_flow(x[:1200], x[1200:], alphas=(0.0,), epochs=15, patience=3, seed=0)
    assert fit.best_epoch > 0
    assert fit.val_nll < fit.initial_val_nll - 1e-3


def test_kernel_vqflow_rejects_bad_input():
    centres = caps(30, seed=8)
    with pytest.raises(ValueError, match=r"kappas: expected \(30,\) finite values > 0"):
        kernel_vqflow(centres, torch.zeros(30))
    with pytest.raises(ValueError, match=r"weights: expected \(30,\) non-negative values adding to 1"):
        kernel_vqflow(centres, torch.full((30,), 5.0), torch.full((30,), 0.5))
    with pytest.raises(ValueError, match="centres: expected unit vectors"):
        VMFKernelDensity(2 * centres, 5.0)


def test_kernel_flow_save_load_round_trip(tmp_path):
    from vqflows.experiments import earth

    x = caps(300, seed=9)
    fit = fit_kernel_flow(x[:240], x[240:], alphas=(0.0, 0.5), epochs=2, patience=1, seed=0)
    config = earth.EarthConfig()
    earth.save_kernel_flow(fit.model, tmp_path / "kernel-flow.pt", config)
    back = earth.load_fitted(tmp_path)
    with torch.no_grad():
        np.testing.assert_array_equal(back.log_prob(x).numpy(), fit.model.log_prob(x).numpy())
    assert back.K == 240
