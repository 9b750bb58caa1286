"""The stacked ensemble (:class:`vqflows.ensemble.VQFlowEnsemble`): exact, sampled by the same law, saved and loaded.

It is the default ``vq-maf`` model, built here as a run builds it: eight members, two draws each of 8, 16,
32 and 64 Gaussian-mixture charts (the default 32 charts' atlas, 240 charts in all) with fitted charts,
weights and frames and perturbed flows, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

import vqflows
from vqflows import datasets, presets
from vqflows.config import STACK_REPEATS
from vqflows.ensemble import VQFlowEnsemble, load, stacking_weights
from vqflows.selection import partition_candidates
from vqflows.training import fit_chart_weights, fit_partition

#: unequal member weights, summing to 1
WEIGHTS = [w / 36 for w in range(1, 9)]


def _member(x: torch.Tensor, charts: int, seed: int, features: int = 3) -> vqflows.VQFlow:
    torch.manual_seed(seed)
    model = presets.create("vq-maf", features=features, charts=charts, partition="gmm").double()
    fit_partition(model, x, seed=seed)
    fit_chart_weights(model, x)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def default():
    """The default run's ensemble shape on helix points: two members each of 8, 16, 32, 64 charts, unequal weights."""
    s = datasets.load("helix", n=1_000, seed=0)
    x = s.train.double()
    ks = [c[1] for c in partition_candidates("maf", "auto", 32, STACK_REPEATS)]
    assert ks == [8, 16, 32, 64] * 2
    members = [_member(x, k, seed) for seed, k in enumerate(ks)]
    return VQFlowEnsemble(members, WEIGHTS), s.test.double()


def test_log_prob_is_the_weighted_sum_of_the_members_and_the_union_of_charts(default):
    model, x = default
    assert model.K == 240 and model.weights.sum().item() == pytest.approx(1.0)
    by_member = torch.stack([m.log_prob(x) for m in model.members], dim=-1) + torch.tensor(WEIGHTS, dtype=torch.float64).log()
    torch.testing.assert_close(model.log_prob(x), torch.logsumexp(by_member, dim=-1), rtol=0, atol=1e-10)
    # one chart mixture over the union of the members' charts, checked against a per-chart loop
    loop = torch.stack([model.members[j]._row_log_prob(x, torch.full((len(x),), k))
                        for j, m in enumerate(model.members) for k in range(m.K)], dim=-1)
    torch.testing.assert_close(model.chart_log_prob(x), loop, rtol=1e-12, atol=1e-7)  # far charts reach -1e17 nats
    torch.testing.assert_close(model.log_prob(x), torch.logsumexp(loop + model.log_weights, dim=-1), rtol=0, atol=1e-7)
    # the bound sums fewer charts: never above the exact density
    assert bool((model.log_prob_bound(x, top=2) <= model.log_prob(x) + 1e-10).all())


def test_samples_follow_the_weights_and_score_as_their_charts(default):
    model, _ = default
    x, k = model.sample(4_000, seed=0, return_charts=True)
    assert x.shape == (4_000, 3) and x.dtype == torch.float64
    assert model.member_charts == [(0, 8), (8, 24), (24, 56), (56, 120), (120, 128), (128, 144), (144, 176), (176, 240)]
    offsets = torch.tensor([0, 8, 24, 56, 120, 128, 144, 176, 240])
    share = torch.stack([((k >= a) & (k < b)).double().mean() for a, b in zip(offsets[:-1], offsets[1:])])
    torch.testing.assert_close(share, torch.tensor(WEIGHTS, dtype=torch.float64), rtol=0, atol=0.03)
    torch.testing.assert_close(model.sample(50, seed=3), model.sample(50, seed=3))
    # a sample of chart k is in that chart's support: its log-density there is finite and not tiny
    j = int(torch.searchsorted(offsets, k[0], right=True)) - 1
    with torch.no_grad():
        assert math.isfinite(float(model.members[j]._row_log_prob(x[:1], k[:1] - offsets[j])))
    assert model.sample((2, 3)).shape == (2, 3, 3) and model.sample((0,)).shape == (0, 3)


def test_rsample_keeps_gradients_and_distribution_wraps_it(default):
    model, x = default
    s = model.rsample(16, seed=1)
    s.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    model.zero_grad()
    d = model.distribution()
    assert d.event_shape == (3,)
    torch.testing.assert_close(d.log_prob(x[:5]), model.log_prob(x[:5]))


def test_integrates_to_one_in_two_dimensions():
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(800, generator=gen, dtype=torch.float64) * 2 * math.pi
    x = torch.stack([theta.cos(), theta.sin()], -1) + 0.1 * torch.randn(800, 2, generator=gen, dtype=torch.float64)
    model = VQFlowEnsemble([_member(x, 4, 0, features=2), _member(x, 8, 1, features=2)], [0.3, 0.7])
    g = torch.linspace(-3, 3, 301, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        mass = float(model.log_prob(grid).exp().sum()) * float(g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.01)


def test_save_and_load_round_trip_exactly(default, tmp_path):
    model, x = default
    model.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert isinstance(back, VQFlowEnsemble) and back.K == model.K
    assert torch.equal(back.log_prob(x), model.log_prob(x)) and back.log_mix.dtype == torch.float64
    assert torch.equal(VQFlowEnsemble.load(tmp_path / "m").mix_weights, model.mix_weights)
    assert torch.equal(vqflows.load(tmp_path / "m").log_prob(x), model.log_prob(x))  # the top-level loader
    with pytest.raises(ValueError, match=r"got an ensemble's .* load it with vqflows.load\(path\)"):
        vqflows.VQFlow.load(tmp_path / "m")
    # a single model saved over the ensemble replaces it, and the other way round: a folder holds one model
    model.members[0].save(tmp_path / "m")
    assert isinstance(load(tmp_path / "m"), vqflows.VQFlow) and not list((tmp_path / "m").glob("member-*"))
    model.save(tmp_path / "m")
    assert isinstance(load(tmp_path / "m"), VQFlowEnsemble) and not (tmp_path / "m" / "weights.pt").exists()
    with pytest.raises(ValueError, match="expected a saved ensemble"):
        model.members[0].save(tmp_path / "one") and VQFlowEnsemble.load(tmp_path / "one")
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="expected an ensemble recipe"):
        load(tmp_path / "m")


def test_stacking_weights_maximise_the_held_out_likelihood():
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    lp[:, 2] -= 3.0  # a poor member
    w = stacking_weights(lp)
    assert w.sum().item() == pytest.approx(1.0) and bool((w > 0).all()) and w[2] < w[0]

    def score(v):
        return float(torch.logsumexp(lp + v.log(), dim=-1).mean())

    best = score(w)
    assert best >= max(float(lp[:, j].mean()) for j in range(3))  # at least every member alone
    for _ in range(50):  # and every other weighting
        other = torch.rand(3, generator=gen, dtype=torch.float64) + 1e-3
        assert best >= score(other / other.sum()) - 1e-7
    with pytest.raises(ValueError, match="log_probs"):
        stacking_weights(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="finite"):
        stacking_weights(torch.tensor([[0.0, -math.inf]]))


def test_bad_members_and_weights_are_refused(default):
    model, _ = default
    a, b = model.members[0], model.members[1]
    with pytest.raises(ValueError, match="members: expected a non-empty"):
        VQFlowEnsemble([])
    with pytest.raises(ValueError, match="same number of features"):
        VQFlowEnsemble([a, vqflows.build(2, "maf", charts=2)])
    with pytest.raises(ValueError, match="weights: expected 2 positive"):
        VQFlowEnsemble([a, b], [1.0, 0.0])
    with pytest.raises(ValueError, match="weights: expected 2 positive"):
        VQFlowEnsemble([a, b], [1.0])
    with pytest.raises(ValueError, match="x: expected"):
        model.log_prob(torch.zeros(4, 2))
