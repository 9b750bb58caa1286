"""Contract tests of the VQ-Flow: exact densities, batched = looped, normalisation, inference, persistence."""

from __future__ import annotations

import math

import pytest
import torch

import vqflows
from vqflows import VQFlow, build, datasets, fit
from vqflows.charts import VQAutoencoder, chart_weights, membership
from vqflows.training import fit_chart_weights, fit_partition
from vqflows.training.objective import cell_loss

FULL_FLOWS = ["realnvp", "maf", "nsf"]


def _points(n=300, d=3, seed=0):
    return datasets.get("helix").sample(n, seed=seed).double() if d == 3 else datasets.get("rings").sample(n, seed=seed).double()


def _fitted(flow="maf", charts=4, d=3, seed=0, **kw):
    """A model with charts, weights and frames fitted, and a perturbed (non-identity) flow."""
    torch.manual_seed(seed)
    model = build(d, flow, charts, transforms=2, hidden_features=(16, 16), vq_hidden=(16,), **kw).double()
    x = _points(400, d, seed)
    if flow == "sphere":
        x = torch.nn.functional.normalize(x - x.mean(0), dim=-1)
    fit_partition(model, x, seed=seed, epochs=3)
    fit_chart_weights(model, x)
    with torch.no_grad():
        for p in model.flow.parameters():
            if p.requires_grad:  # frozen parts (the fixed sphere) stay as they are
                p.add_(0.1 * torch.randn_like(p))
    return model, x


@pytest.mark.parametrize("flow", FULL_FLOWS)
def test_chart_log_prob_matches_autograd_jacobian(flow):
    """log p(x|k) = log N(z) + log|det dz/dx| for the whole chart map z = f_k(x) (frame included)."""
    model, x = _fitted(flow)
    xs = x[:5]
    for k in range(model.K):
        kk = torch.full((len(xs),), k)
        lp = model.chart_log_prob(xs)[:, k]
        for i in range(len(xs)):
            f = lambda v: model.chart_map(v[None], kk[:1])[0][0]
            J = torch.autograd.functional.jacobian(f, xs[i])
            z = f(xs[i])
            ref = -0.5 * (z @ z) - 1.5 * math.log(2 * math.pi) + torch.linalg.slogdet(J)[1]
            assert torch.allclose(lp[i], ref, atol=1e-8), (flow, k, i)


@pytest.mark.parametrize("flow", FULL_FLOWS)
def test_inverse_round_trip(flow):
    model, x = _fitted(flow)
    z, k = model.encode(x[:50], return_charts=True)
    assert torch.allclose(model.decode(z, k), x[:50], atol=1e-8)
    xs, ks = model.sample(50, seed=1, return_charts=True)
    zs = model.chart_map(xs, ks)[0]
    assert torch.allclose(model.decode(zs, ks), xs, atol=1e-8)


@pytest.mark.parametrize("flow", FULL_FLOWS + ["cef", "sphere"])
def test_all_charts_pass_equals_per_chart_loop(flow):
    model, x = _fitted(flow, charts=5)
    batched = model.chart_log_prob(x[:40])
    assert batched.shape == (40, 5)
    for k in range(model.K):
        y = (x[:40] - model.frames.shift[k]) @ model.frames.matrix[k].T
        c = model.contexts[k].expand(40, -1)
        looped = model.flow.log_prob(y, c) + model.frames.logdet[k]
        assert torch.allclose(batched[:, k], looped, atol=1e-10)
    # chunking does not change the result
    assert torch.allclose(model.chart_log_prob(x[:40], chunk=7), batched, atol=1e-12)


def test_mixture_and_its_lower_bounds():
    model, x = _fitted("maf", charts=5, m=2, eps=0.1)
    lp_all = model.chart_log_prob(x) + model.log_weights
    mix = model.log_prob(x)
    assert torch.allclose(mix, torch.logsumexp(lp_all, -1))
    member = model.membership(x)
    assert (member.sum(-1) >= 2).all()
    charts = model.log_prob_bound(x, "member")
    ref = torch.logsumexp(lp_all.masked_fill(~member, -math.inf), -1)
    assert torch.allclose(charts, ref)
    assert (charts <= mix + 1e-12).all()
    for top in (1, 2, 3):
        near = model.log_prob_bound(x, top=top)
        nearest = model.top_charts(x, top)
        assert torch.allclose(near, torch.logsumexp(lp_all.gather(1, nearest), -1))
        assert (near <= mix + 1e-12).all()
    assert torch.allclose(model.log_prob_bound(x, top=5), mix)  # every chart: the exact mixture
    assert torch.equal(model.log_prob_bound(x), model.log_prob_bound(x, "nearest", top=4))


def test_nearest_code_agrees_with_brute_force():
    torch.manual_seed(0)
    ae = VQAutoencoder(3, 7, 2, hidden=(8,)).double()
    x = _points(200)
    ae.standardise.fit(x)
    d2 = ae.distances(x)
    e = ae.encode(x)
    for i in range(len(x)):
        brute = min(range(7), key=lambda k: float(((e[i] - ae.codebook[k]) ** 2).sum().detach()))
        assert int(d2[i].argmin()) == brute
        assert torch.allclose(d2[i], ((e[i] - ae.codebook) ** 2).sum(-1))


def test_membership_rules():
    d2 = torch.tensor([[0.1, 0.5, 0.52, 2.0], [3.0, 1.0, 0.2, 0.21]])
    assert membership(d2, 1).tolist() == [[True, False, False, False], [False, False, True, False]]
    assert membership(d2, 2).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert membership(d2, 2, eps=0.05).tolist() == [[True, True, True, False], [False, False, True, True]]
    w = chart_weights(membership(d2, 1))
    assert torch.allclose(w, torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=w.dtype))


def test_one_chart_is_the_plain_flow():
    """charts=1: no context, one global frame — the same model, parameter for parameter, as charts=None."""
    x = _points(300).float()
    torch.manual_seed(0)
    one = build(3, "maf", 1, transforms=2, hidden_features=(16, 16))
    torch.manual_seed(0)
    plain = build(3, "maf", None, transforms=2, hidden_features=(16, 16))
    h1 = fit(one, x[:200], x[200:], epochs=3, seed=0, chart_epochs=2)
    h0 = fit(plain, x[:200], x[200:], epochs=3, seed=0, chart_epochs=2)
    assert one.contexts.shape == (1, 0) and float(one.weights) == 1.0
    assert torch.allclose(one.log_prob(x), plain.log_prob(x), atol=1e-6)
    assert torch.allclose(one.log_prob_bound(x, "member"), one.log_prob(x))
    assert h1.train_loss == pytest.approx(h0.train_loss, rel=1e-6)


@pytest.mark.parametrize("partition", ["vqae", "kmeans"])
def test_fitted_2d_model_integrates_to_one(partition):
    """A fitted VQ-Flow on the 2-D rings: the mixture integrates to 1 ± 0.02, the member-chart bound to ≤ 1."""
    s = datasets.load("rings", n=1600, seed=0)
    torch.manual_seed(0)
    model = build(2, "maf", 6, partition=partition, transforms=3, hidden_features=(32, 32))
    fit(model, s.train, s.val, epochs=15, seed=0, chart_epochs=10)
    g = torch.linspace(-4.5, 4.5, 361, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = float(g[1] - g[0]) ** 2
    model = model.double()
    with torch.no_grad():
        mix = model.log_prob(grid).exp().sum() * cell
        charts = model.log_prob_bound(grid, "member").exp().sum() * cell
    assert abs(float(mix) - 1.0) < 0.02
    assert float(charts) <= 1.0 + 0.005
    # and it learned something: far better than a broad Gaussian on held-out points
    assert float(model.log_prob(s.test.double()).mean()) > -3.5


def test_log_prob_finite_far_from_every_chart():
    model, x = _fitted("maf")
    far = torch.tensor([[50.0, -40.0, 30.0], [1e3, 0.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(model.log_prob(far)).all()


def test_encode_modes_agree_for_hard_charts_and_differ_for_soft():
    model, x = _fitted("maf", charts=4)
    zm = model.encode(x[:30], "map")
    assert torch.allclose(model.encode(x[:30], "expected"), zm)
    assert torch.allclose(model.encode(x[:30], "sample", generator=torch.Generator().manual_seed(0)), zm)
    soft, _ = _fitted("maf", charts=4, m=2)
    ze = soft.encode(x[:30], "expected")
    z_all = torch.stack([soft.chart_map(x[:30], torch.full((30,), k))[0] for k in range(4)], 1)
    joint = soft.chart_log_prob(x[:30]) + soft.log_weights
    post = torch.softmax(joint.masked_fill(~soft.membership(x[:30]), -math.inf), -1)
    assert torch.allclose(ze, (post[..., None] * z_all).sum(1), atol=1e-10)


def test_sampling_follows_chart_weights():
    model, _ = _fitted("maf", charts=4)
    x, k = model.sample(4000, seed=0, return_charts=True)
    freq = torch.bincount(k, minlength=4).double() / 4000
    assert torch.allclose(freq, model.weights.double(), atol=0.03)
    assert x.shape == (4000, 3) and torch.isfinite(x).all()
    assert torch.equal(model.sample(10, seed=3), model.sample(10, seed=3))


def test_seeded_runs_are_identical():
    x = _points(300).float()

    def run():
        torch.manual_seed(123)  # a different global state must not matter
        model = build(3, "maf", 4, transforms=2, hidden_features=(16, 16), vq_hidden=(16,))
        fit(model, x[:200], x[200:], epochs=2, seed=7, chart_epochs=3)
        return model.log_prob(x)

    a = run()
    torch.manual_seed(999)
    b = run()
    assert torch.equal(a, b)


def test_every_flow_parameter_gets_a_gradient():
    model, x = _fitted("maf", charts=3)
    k = model.assign(x[:64])
    cell_loss(model, x[:64], k).mean().backward()
    for name, p in model.flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_save_load_round_trip(tmp_path):
    model, x = _fitted("realnvp", charts=3)
    model.save(tmp_path / "m")
    again = VQFlow.load(tmp_path / "m").double()
    assert torch.allclose(again.log_prob(x[:20]), model.log_prob(x[:20]))


def test_training_reports_non_finite_loss():
    x = _points(200).float()
    model = build(3, "maf", 2, transforms=2, hidden_features=(8,))
    with pytest.raises(vqflows.TrainingError, match="epoch 1"):
        fit(model, x, epochs=2, lr=1e6, chart_epochs=1, batch_size=128)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.log_prob(torch.zeros(4, 2)), r"expected shape \(N, 3\), got \(4, 2\)"),
    (lambda m: m.log_prob(torch.tensor([[0.0, float("nan"), 1.0]])), "finite"),
    (lambda m: m.log_prob(torch.zeros(3)), r"expected shape \(N, 3\)"),
    (lambda m: m.log_prob_bound(torch.zeros(2, 3), "top"), "charts: expected one of 'nearest', 'member'"),
    (lambda m: m.log_prob_bound(torch.zeros(2, 3), "member", top=2), "top: expected None with charts='member'"),
    (lambda m: m.log_prob_bound(torch.zeros(2, 3), top=0), "top: expected an integer >= 1"),
    (lambda m: m.encode(torch.zeros(2, 3), mode="best"), "mode: expected one of"),
    (lambda m: fit(m, torch.randn(3, 3), epochs=1), "at least 4 points"),
    (lambda m: m.sample(0), "n: expected an integer >= 1"),
])
def test_bad_input_raises_value_error(call, message):
    model = build(3, "maf", 4, transforms=1, hidden_features=(8,))
    with pytest.raises(ValueError, match=message):
        call(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(flow="glow"), "flow: expected one of"),
    (dict(partition="som"), "partition: expected one of"),
    (dict(charts=0), "charts: expected an integer >= 1"),
    (dict(charts=4, m=5), "m: expected at most charts=4"),
    (dict(eps=-1.0), "eps: expected a finite number >= 0"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(3, **kwargs)


def test_load_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="expected a folder with config.json"):
        VQFlow.load(tmp_path / "nope")


def test_ctrl_c_keeps_the_best_weights(tmp_path, monkeypatch):
    """An interrupt mid-training returns the best model so far, and a run folder keeps it on disk."""
    x = _points(300).float()
    model = build(3, "maf", 2, transforms=2, hidden_features=(8,))

    def stop(epoch, m, h):
        if epoch == 2:
            raise KeyboardInterrupt

    h = fit(model, x[:200], x[200:], epochs=10, chart_epochs=1, callbacks=[stop])
    assert h.interrupted and h.epochs == 2 and h.best_epoch in (1, 2)
    assert torch.isfinite(model.log_prob(x)).all()

    from vqflows import runs

    real_fit = runs.fit
    monkeypatch.setattr(runs, "fit", lambda *a, **k: real_fit(*a, **{**k, "callbacks": [stop]}))
    cfg = runs.RunConfig(model="vq-maf").with_overrides(["n=400", "charts=2", "partition=vqae", "chart_epochs=1",
                                                           "hidden=8", "epochs=5"])
    with pytest.raises(KeyboardInterrupt):
        runs.train_run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "interrupted.json").exists() and not (tmp_path / "run" / "metrics.json").exists()
    again = VQFlow.load(tmp_path / "run")
    assert again.K == 2


@pytest.mark.parametrize("flow", ["cef", "sphere"])
def test_embedding_flows_encode_decode(flow):
    """z -> x -> z is exact for embedding flows; x -> z -> x is the projection onto the chart's surface."""
    model, x = _fitted(flow, charts=3)
    xs, ks = model.sample(40, seed=0, return_charts=True)
    zs = model.chart_map(xs, ks)[0]
    assert zs.shape == (40, 2)
    assert torch.allclose(model.decode(zs, ks), xs, atol=1e-7)
    if flow == "sphere":
        assert torch.allclose(xs.norm(dim=-1), torch.ones(40, dtype=xs.dtype), atol=1e-9)
        assert torch.allclose(model.reconstruction(x), torch.zeros(len(x), dtype=x.dtype), atol=1e-9)


def test_vq_sphere_integrates_to_one_over_the_sphere():
    from vqflows.flows.sphere import sphere_quadrature

    model, _ = _fitted("sphere", charts=5)
    with torch.no_grad():
        total = sphere_quadrature(lambda v: model.log_prob(v), 160, 320)
    assert abs(total - 1.0) < 0.01
