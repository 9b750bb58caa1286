"""Conformal embedding flows: exact densities on learned and known spheres, round trips, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import zuko
from torch.autograd.functional import jacobian

from vqflows.flows.cef import CEF
from vqflows.flows.sphere import SphereCEF, rotation_to, sphere_quadrature, stereographic_embedding

C = 2
SMALL = dict(transforms=3, hidden_features=(32, 32))


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every trainable parameter away from its initial value, so identities cannot hide errors."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return module


def identity_base(flow: CEF) -> CEF:
    """Zero the last layer of every coupling network: each coupling becomes the identity."""
    with torch.no_grad():
        for m in flow.flow.modules():
            if isinstance(m, zuko.nn.MLP):
                m[-1].weight.zero_()
                m[-1].bias.zero_()
    return flow


def log_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * math.log(2 * math.pi))


def random_cef(context: int, seed: int = 0, bend: float = 0.0) -> CEF:
    """A CEF with every parameter moved, its manifold bent by adding ``bend`` to the normal part of ``b``."""
    torch.manual_seed(seed)
    flow = perturb(CEF(3, context, 2, **SMALL), 0.15)
    sct = flow.embedding.layers[1]
    with torch.no_grad():
        (sct.hyper[-1].bias if context else sct.b)[2] += bend
    return flow


def fitted_sphere(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Least-squares sphere through points: ``2 x·m - k = |x|²`` with ``k = |m|² - r²``; returns (m, r, worst residual)."""
    A = torch.cat([2 * x, -torch.ones(len(x), 1)], dim=1)
    sol = torch.linalg.lstsq(A, x.square().sum(-1, keepdim=True)).solution.squeeze(-1)
    m, k = sol[:3], sol[3]
    r = torch.sqrt(m @ m - k)
    return m, float(r), float(((x - m).norm(dim=-1) - r).abs().max())


# -- known spheres: inverse stereographic projection ---------------------------------------------------------------

@pytest.mark.parametrize("pole", ["north", "south"])
@pytest.mark.parametrize("rotated", [False, True])
def test_stereographic_density_in_closed_form(pole, rotated):
    torch.manual_seed(0)
    r, m = 2.5, torch.tensor([1.0, -2.0, 0.5])
    R = torch.linalg.qr(torch.randn(3, 3))[0] if rotated else torch.eye(3)
    flow = identity_base(SphereCEF(r, m, pole=pole, rotation=R, **SMALL))

    u = 3 * torch.randn(200, 2)
    torch.testing.assert_close((flow.embedding(u) - m).norm(dim=-1), torch.full((200,), r), rtol=0, atol=1e-12)

    x = m + r * torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    # Stereographic projection, derived independently: from the north pole u = y₁₂ / (r - y₃),
    # from the south pole u = y₁₂ / (r + y₃), with y the point in the sphere's own frame.
    y = (x - m) @ R
    sign = -1.0 if pole == "north" else 1.0
    u = y[:, :2] / (r + sign * y[:, 2:])
    lam = 2 * r / (1 + u.square().sum(-1))
    torch.testing.assert_close(flow(x)[0], u, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.log_prob(x), log_normal(u) - 2 * torch.log(lam), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(flow.embedding.log_factor(u), torch.log(lam), rtol=0, atol=1e-12)
    # Radial projection: points off the sphere get the density of their nearest sphere point.
    torch.testing.assert_close(flow.log_prob(m + 1.3 * (x - m)), flow.log_prob(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(flow.reconstruction(m + 1.3 * (x - m)), torch.full((300,), (0.3 * r) ** 2))


def test_pole_and_rotation_place_the_projection_point():
    d = torch.tensor([1.0, -2.0, 2.0]) / 3
    emb = stereographic_embedding(2.0, pole="south", rotation=rotation_to(d))
    torch.testing.assert_close(emb(torch.zeros(1, 2))[0], 2 * d)
    torch.testing.assert_close(emb(torch.tensor([[1e8, 0.0]]))[0], -2 * d, rtol=0, atol=1e-6)
    emb = stereographic_embedding(1.0, pole="north")
    torch.testing.assert_close(emb(torch.tensor([[0.0, -1e8]]))[0], torch.tensor([0.0, 0.0, 1.0]), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in emb.parameters())


def test_sphere_cef_integrates_to_one():
    torch.manual_seed(1)
    r, m = 1.7, torch.tensor([0.3, 0.0, -1.0])
    flow = perturb(SphereCEF(r, m, context=C, pole="south", rotation=rotation_to([1.0, 1.0, 0.0]), **SMALL))
    c = torch.randn(1, C)
    total = sphere_quadrature(lambda x: flow.log_prob(x, c.expand(len(x), C)).detach(), 120, 240, r, centre=m)
    assert abs(total - 1) < 0.01, total
    # The quadrature tells a wrong volume factor apart: |λ|^{-1} in place of λ^{-d} does not integrate to 1.
    def wrong(x):
        rows = c.expand(len(x), C)
        return (flow.log_prob(x, rows) + flow.embedding.log_factor(flow._project(x, rows), rows)).detach()

    wrong = sphere_quadrature(wrong, 120, 240, r, centre=m)
    assert abs(wrong - 1) > 0.05, wrong


@pytest.mark.parametrize("context", [0, C])
def test_learned_sphere_cef_integrates_to_one(context):
    # A sphere of radius about 1 keeps the density spread over it, within reach of the quadrature.
    flow = random_cef(context, seed=2, bend=0.5)
    c = torch.randn(1, context) if context else None
    rows = (lambda n: c.expand(n, context)) if context else (lambda n: None)
    # The image of a plane under a Möbius map is a sphere (or a plane); find it and integrate over it.
    x = flow.inverse(3 * torch.randn(400, 2), rows(400))[0].detach()
    m, r, residual = fitted_sphere(x)
    assert residual < 1e-9 and 0.2 < r < 5, (residual, r)
    total = sphere_quadrature(lambda y: flow.log_prob(y, rows(len(y))).detach(), 160, 320, r, centre=m)
    assert abs(total - 1) < 0.01, total


# -- learned embeddings --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("context", [0, C])
def test_log_prob_matches_autograd_volume(context):
    # On the manifold, p(x) = N(z) / sqrt(det JᵀJ) with J the (D, d) Jacobian of z -> x.
    flow = random_cef(context, seed=3)
    z = torch.randn(5, 2)
    c = torch.randn(5, context) if context else None
    x = flow.inverse(z, c)[0]
    log_p = flow.log_prob(x, c)
    for i in range(len(z)):
        ci = None if c is None else c[i : i + 1]
        J = jacobian(lambda v: flow.inverse(v[None], ci)[0][0], z[i])
        expected = log_normal(z[i]) - 0.5 * torch.logdet(J.T @ J)
        torch.testing.assert_close(log_p[i], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("context", [0, C])
def test_round_trips(context):
    flow = random_cef(context, seed=4)
    z = torch.randn(50, 2)
    c = torch.randn(50, context) if context else None
    x = flow.inverse(z, c)[0]
    torch.testing.assert_close(flow(x, c)[0], z, rtol=0, atol=1e-10)
    torch.testing.assert_close(flow.inverse(flow(x, c)[0], c)[0], x, rtol=0, atol=1e-10)
    torch.testing.assert_close(flow.reconstruction(x, c), torch.zeros(50), rtol=0, atol=1e-20)
    off = x + 0.2 * torch.randn_like(x)
    assert (flow.reconstruction(off, c) > 1e-6).all()
    # Samples lie on the manifold.
    s = flow.sample(c) if context else flow.sample(n=50)
    assert s.shape == (50, 3)
    torch.testing.assert_close(flow.reconstruction(s, c), torch.zeros(50), rtol=0, atol=1e-20)


@pytest.mark.parametrize("context", [0, C])
def test_identity_embedding_at_initialisation(context):
    torch.manual_seed(5)
    flow = CEF(3, context, 2, **SMALL)
    x = torch.randn(20, 3)
    c = torch.randn(20, context) if context else None
    # The initial manifold is the plane of the first d coordinates.
    torch.testing.assert_close(flow.reconstruction(x, c), x[:, 2] ** 2, rtol=0, atol=1e-15)


def test_loss_combines_terms():
    flow = random_cef(C, seed=6)
    flow.alpha, flow.beta = 0.7, 3.0
    x, c = torch.randn(10, 3), torch.randn(10, C)
    expected = -0.7 * flow.log_prob(x, c) + 3.0 * flow.reconstruction(x, c)
    torch.testing.assert_close(flow.loss(x, c), expected)


@pytest.mark.parametrize("context", [0, C])
@pytest.mark.parametrize("perturbed", [False, True])
def test_every_parameter_gets_a_gradient(context, perturbed):
    torch.manual_seed(7)
    flow = CEF(3, context, 2, **SMALL)
    if perturbed:
        perturb(flow)
    x = torch.randn(64, 3)
    c = torch.randn(64, context) if context else None
    flow.loss(x, c).mean().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # At initialisation the zero last layers of the embedding's hypernetworks block the
        # gradient to their hidden layers for one step; away from it every parameter must move.
        if perturbed:
            assert p.grad.abs().sum() > 0, name


def test_state_dict_round_trip():
    flow = random_cef(C, seed=8)
    other = CEF(3, C, 2, **SMALL)
    other.load_state_dict(flow.state_dict())
    x, c = torch.randn(10, 3), torch.randn(10, C)
    torch.testing.assert_close(other.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)


def test_float32_input_is_cast():
    flow = random_cef(0, seed=9)
    assert flow.log_prob(torch.randn(4, 3, dtype=torch.float32)).dtype == torch.float64


# -- input validation ----------------------------------------------------------------------------------------------

def test_bad_input_raises():
    flow = CEF(3, C, 2, **SMALL)
    x, c = torch.randn(10, 3), torch.randn(10, C)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\), got \(10, 2\)"):
        flow.log_prob(torch.randn(10, 2), c)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\), got \(3,\)"):
        flow.loss(torch.randn(3), c)
    with pytest.raises(ValueError, match=r"c: expected shape \(10, 2\), got None"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"c: expected shape \(10, 2\), got \(9, 2\)"):
        flow.loss(x, c[:9])
    with pytest.raises(ValueError, match=r"c: expected shape \(N, 2\), got \(10, 3\)"):
        flow(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"z: expected shape \(N, 2\), got \(10, 3\)"):
        flow.inverse(x, c)
    with pytest.raises(ValueError, match="finite"):
        flow.reconstruction(torch.full((2, 3), math.nan), c[:2])
    with pytest.raises(ValueError, match="n: expected None or the number of context rows 10, got 4"):
        flow.sample(c, 4)
    plain = CEF(3, 0, 2, **SMALL)
    with pytest.raises(ValueError, match=r"c: expected None for an unconditional flow"):
        plain.log_prob(x, c)
    with pytest.raises(ValueError, match="n: expected an integer >= 1, got None"):
        plain.sample()


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="manifold_dim: expected at most features = 3, got 4"):
        CEF(3, 0, 4)
    with pytest.raises(ValueError, match="alpha, beta"):
        CEF(3, 0, 2, beta=-1.0)
    with pytest.raises(ValueError, match=r"embedding: expected a map R\^2 -> R\^3"):
        CEF(3, 0, 2, embedding=_pad_embedding())
    with pytest.raises(ValueError, match="radius: expected a finite number > 0, got -1.0"):
        SphereCEF(-1.0)
    with pytest.raises(ValueError, match="pole: expected one of 'north', 'south', got 'east'"):
        SphereCEF(pole="east")
    with pytest.raises(ValueError, match="orthogonal"):
        SphereCEF(rotation=2 * torch.eye(3))
    with pytest.raises(ValueError, match=r"centre: expected 3 finite numbers, got shape \(2,\)"):
        SphereCEF(centre=[0.0, 1.0])


def _pad_embedding():
    from vqflows.flows.conformal import ConformalEmbedding, ZeroPad

    return ConformalEmbedding([ZeroPad(1, 3)])


def test_registry_builds_cef():
    from vqflows.flows import chart_flow

    flow = chart_flow("cef", 3, C, manifold_dim=2, **SMALL)
    assert isinstance(flow, CEF) and flow.conformal and (flow.features, flow.context, flow.manifold_dim) == (3, C, 2)
