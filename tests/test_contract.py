"""One contract over every preset (:func:`vqflows.presets.names`): what any model the library builds must do.

Every preset is built at the size a user gets (32 charts for the VQ presets on 3-D data; small image
models), its charts, weights and frames fitted and its flow moved away from the identity, then checked:
shapes and dtypes, the all-charts density and its lower bounds against a per-chart loop, sample/rsample
(with gradients), the inverse round trip, log|det J| against autograd, save/load, and ``repr``. Run on
another device or dtype with ``--device cuda`` / ``--dtype float32`` (exactness tolerances are for float64).
"""

from __future__ import annotations

import math

import pytest
import torch

from vqflows import VQFlow, presets
from vqflows.training import fit_chart_weights, fit_partition

NAMES = presets.names()


def _args(name: str) -> dict:
    if name.startswith("image-"):
        args = dict(shape=[4, 4], transforms=1, hidden=[8], latent=2, vq_channels=[2], vq_hidden=[8])
        if "-vq-" in name:
            args["charts"] = 3
        return args
    return dict(features=3)  # the defaults: 32 charts for vq-*, 5 transforms of 64x64


def _points(name: str, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    features = 16 if name.startswith("image-") else 3
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    if "sphere" in name:
        x = torch.nn.functional.normalize(x, dim=-1)
    return x.to(dtype)


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, device, dtype):
    """``(name, model, points)``: a model with fitted charts, weights and frames and a perturbed flow."""
    name = request.param
    torch.manual_seed(0)
    model = presets.create(name, **_args(name)).to(device, dtype)
    x = _points(name, 600, 0, dtype).to(device)
    fit_partition(model, x, epochs=2)
    fit_chart_weights(model, x)
    with torch.no_grad():
        for p in model.flow.parameters():
            if p.requires_grad:  # frozen parts (the fixed sphere) stay as they are
                p.add_(0.05 * torch.randn_like(p))
    return name, model.eval(), x


def _on_model(model: VQFlow, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points the model can produce (on its manifold for embedding flows) and their charts."""
    return model.sample(n, seed=seed, return_charts=True)


def _tol(dtype: torch.dtype) -> float:
    return 1e-7 if dtype == torch.float64 else 1e-3


def test_shapes_and_dtypes(fitted, dtype):
    name, model, x = fitted
    D, K = model.features, model.K
    assert K == (32 if name.startswith("vq-") else 3 if name.startswith("image-vq") else 1)
    assert model.log_prob(x[:7]).shape == (7,) and model.log_prob(x[:7]).dtype == dtype
    assert model.chart_log_prob(x[:7]).shape == (7, K)
    assert model.log_prob(x[:0]).shape == (0,)
    assert model.sample(5).shape == (5, D) and model.sample(5).dtype == dtype
    assert model.sample((2, 3)).shape == (2, 3, D)
    z, k = model.encode(x[:7], return_charts=True)
    assert z.shape == (7, model.manifold_dim) and k.shape == (7,) and k.dtype == torch.long
    assert model.weights.shape == (K,) and abs(float(model.weights.sum()) - 1) < _tol(dtype)


def test_log_prob_equals_a_per_chart_loop(fitted, dtype):
    """The batched all-charts pass equals K separate chart evaluations, summed with the weights."""
    _, model, x = fitted
    xs = _on_model(model, 20, seed=1)[0]
    looped = []
    for k in range(model.K):
        z, ladj = model.chart_map(xs, torch.full((len(xs),), k, device=xs.device))
        looped.append(model.flow.base.log_prob(z) + ladj)
    looped = torch.stack(looped, dim=-1)
    torch.testing.assert_close(model.chart_log_prob(xs), looped, rtol=0, atol=_tol(dtype))
    mixture = torch.logsumexp(looped + model.log_weights, dim=-1)
    torch.testing.assert_close(model.log_prob(xs), mixture, rtol=0, atol=_tol(dtype))
    torch.testing.assert_close(model.log_prob(xs, chunk=5), model.log_prob(xs), rtol=0, atol=_tol(dtype))
    # the lower bounds sum some of those charts: each point's nearest ones, or those containing it
    joint = looped + model.log_weights
    for top in (1, 4):
        near = model.chart_distances(xs).topk(min(top, model.K), dim=-1, largest=False).indices
        bound = model.log_prob_bound(xs, top=top)
        torch.testing.assert_close(bound, torch.logsumexp(joint.gather(1, near), dim=-1), rtol=0, atol=_tol(dtype))
        assert bool((bound <= mixture + _tol(dtype)).all())
    member = model.log_prob_bound(xs, "member")
    torch.testing.assert_close(member, torch.logsumexp(joint.masked_fill(~model.membership(xs), -math.inf), dim=-1),
                               rtol=0, atol=_tol(dtype))
    assert bool((member <= mixture + _tol(dtype)).all())


def test_sample_and_rsample(fitted):
    _, model, _ = fitted
    a = model.sample(8, seed=3)
    torch.testing.assert_close(model.sample(8, seed=3), a, rtol=0, atol=0)  # seeded draws repeat
    assert a.grad_fn is None and torch.isfinite(a).all()
    r = model.rsample(16, seed=4)
    r.square().sum().backward()
    grads = [p.grad for p in model.flow.parameters() if p.requires_grad]
    try:
        assert grads and all(g is not None for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)
    finally:
        model.zero_grad(set_to_none=True)


def test_inverse_round_trip(fitted, dtype):
    """decode(encode(x)) = x for points the model can produce, and encode(decode(z)) = z."""
    _, model, _ = fitted
    xs, ks = _on_model(model, 30, seed=5)
    z = model.chart_map(xs, ks)[0]
    torch.testing.assert_close(model.decode(z, ks), xs, rtol=0, atol=100 * _tol(dtype))
    torch.testing.assert_close(model.chart_map(model.decode(z, ks), ks)[0], z, rtol=0, atol=100 * _tol(dtype))


def test_log_det_against_autograd(fitted, dtype):
    """log p(x | k) = log N(z) − ½ log det(JᵀJ), J = ∂x/∂z of the chart's inverse map (the full Jacobian
    determinant when d = D), for points on the model and every chart that can produce them."""
    if dtype != torch.float64:
        pytest.skip("the autograd check is for float64")
    _, model, _ = fitted
    d = model.manifold_dim
    gen = torch.Generator().manual_seed(6)
    charts = torch.randint(model.K, (4,), generator=gen)
    z = torch.randn(4, d, generator=gen, dtype=torch.float64).to(model.log_weights.device)
    for zi, k in zip(z, charts.to(z.device)):
        kk = k.reshape(1)
        x = model.decode(zi[None], kk)
        J = torch.autograd.functional.jacobian(lambda v: model.decode(v[None], kk)[0], zi)
        expected = -0.5 * float(zi @ zi) - 0.5 * d * math.log(2 * math.pi) - 0.5 * float(torch.logdet(J.T @ J))
        got = float(model.chart_log_prob(x.detach())[0, int(k)])
        assert abs(got - expected) < 1e-6, (int(k), got, expected)


def test_save_load_round_trip(fitted, tmp_path):
    name, model, x = fitted
    model.save(tmp_path / "m")
    again = VQFlow.load(tmp_path / "m", map_location=x.device)
    assert again.spec == model.spec and again.spec["preset"] == name
    torch.testing.assert_close(again.log_prob(x[:16]), model.log_prob(x[:16]), rtol=0, atol=0)
    torch.testing.assert_close(again.sample(4, seed=0), model.sample(4, seed=0), rtol=0, atol=0)


def test_repr_names_the_parts(fitted):
    _, model, _ = fitted
    text = repr(model)
    assert text.startswith("VQFlow(") and f"charts={model.K}" in text
    assert type(model.flow).__name__ in text and "frames" in text
