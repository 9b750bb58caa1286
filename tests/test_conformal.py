"""Contract tests for conformal layers: one table, every layer and composition, float64."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from vqflows.flows.conformal import (
    ConditionalRotation,
    ConditionalScaleShift,
    ConditionalSpecialConformal,
    ConformalEmbedding,
    Orthogonal,
    ScaleShift,
    SpecialConformal,
    ZeroPad,
)

C = 2


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every trainable parameter away from its (often identity) initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


# name -> (factory, d_in, context); adding a layer to the contract is one line.
LAYERS = {
    "pad-2-3": (lambda: ZeroPad(2, 3), 2, 0),
    "pad-1-3": (lambda: ZeroPad(1, 3), 1, 0),
    "pad-3-3": (lambda: ZeroPad(3, 3), 3, 0),
    "scale-shift": (lambda: ScaleShift(3), 3, 0),
    "orthogonal": (lambda: Orthogonal(3), 3, 0),
    "special-conformal": (lambda: SpecialConformal(3), 3, 0),
    "cond-scale-shift": (lambda: ConditionalScaleShift(3, C), 3, C),
    "cond-rotation": (lambda: ConditionalRotation(3, C), 3, C),
    "cond-rotation-4": (lambda: ConditionalRotation(4, C), 4, C),
    "cond-special-conformal": (lambda: ConditionalSpecialConformal(3, C), 3, C),
    "embedding": (lambda: ConformalEmbedding([ZeroPad(2, 3), SpecialConformal(3), Orthogonal(3), ScaleShift(3)]), 2, 0),
    "embedding-1-4": (lambda: ConformalEmbedding([ZeroPad(1, 4), SpecialConformal(4), ScaleShift(4), SpecialConformal(4)]), 1, 0),
    "cond-embedding": (
        lambda: ConformalEmbedding([ZeroPad(2, 3), ConditionalSpecialConformal(3, C), ConditionalRotation(3, C),
                                    ConditionalScaleShift(3, C), Orthogonal(3), SpecialConformal(3)]),
        2, C,
    ),
}


def build(name: str, seed: int = 0):
    factory, d, context = LAYERS[name]
    torch.manual_seed(seed)
    layer = perturb(factory())
    u = 0.7 * torch.randn(6, d)
    c = torch.randn(6, context) if context else None
    return layer, u, c


@pytest.mark.parametrize("name", LAYERS)
def test_log_factor_matches_autograd_jacobian(name):
    layer, u, c = build(name)
    d = u.shape[1]
    log_lambda = layer.log_factor(u, c)
    assert log_lambda.shape == (u.shape[0],)
    for i in range(u.shape[0]):
        ci = None if c is None else c[i : i + 1]
        J = jacobian(lambda v: layer(v[None], ci)[0], u[i])
        assert J.shape == (layer.out_features, d)
        gram = J.T @ J
        lam2 = torch.exp(2 * log_lambda[i]).detach()
        # Conformal: JᵀJ = λ² I, off-diagonals included.
        torch.testing.assert_close(gram, lam2 * torch.eye(d), rtol=0, atol=1e-10 * float(lam2))
        torch.testing.assert_close(0.5 * torch.logdet(gram), d * log_lambda[i], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", LAYERS)
def test_left_inverse(name):
    layer, u, c = build(name)
    x = layer(u, c)
    assert x.shape == (u.shape[0], layer.out_features)
    torch.testing.assert_close(layer.inverse(x, c), u, rtol=0, atol=1e-12)
    # Off the manifold c† is still a left inverse of c: c†(c(c†(x))) = c†(x).
    y = x + 0.1 * torch.randn_like(x)
    v = layer.inverse(y, c)
    torch.testing.assert_close(layer.inverse(layer(v, c), c), v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", LAYERS)
def test_forward_and_log_factor_agree(name):
    layer, u, c = build(name)
    x, log_lambda = layer.forward_and_log_factor(u, c)
    torch.testing.assert_close(x, layer(u, c), rtol=0, atol=0)
    torch.testing.assert_close(log_lambda, layer.log_factor(u, c), rtol=0, atol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_identity_at_initialisation(name):
    factory, d, context = LAYERS[name]
    torch.manual_seed(1)
    layer = factory()
    u = torch.randn(5, d)
    c = torch.randn(5, context) if context else None
    x, log_lambda = layer.forward_and_log_factor(u, c)
    torch.testing.assert_close(x, ZeroPad(d, layer.out_features)(u), rtol=0, atol=1e-15)
    torch.testing.assert_close(log_lambda, torch.zeros(5), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in LAYERS if LAYERS[n][2]])
def test_conditional_layers_depend_on_context(name):
    layer, u, c = build(name)
    assert not torch.allclose(layer(u, c), layer(u, c.flip(0)))


def test_special_conformal_bends_plane_into_sphere():
    # With b normal to the padded plane the image is the sphere of radius 1/(2|b|) centred at -b/(2|b|²).
    b = torch.tensor([0.0, 0.0, 0.8])
    emb = ConformalEmbedding([ZeroPad(2, 3), SpecialConformal(3, b=b)])
    x = emb(5 * torch.randn(100, 2))
    torch.testing.assert_close((x + b / (2 * b @ b)).norm(dim=-1), torch.full((100,), 1 / (2 * b.norm())))


def test_orthogonal_init_and_rotation_are_orthogonal():
    q = torch.linalg.qr(torch.randn(3, 3))[0]
    layer = perturb(Orthogonal(3, init=q), 0.0)
    torch.testing.assert_close(layer.matrix, q)
    rot = perturb(ConditionalRotation(3, C))
    m = rot.matrix(torch.randn(4, C))
    torch.testing.assert_close(m.transpose(-1, -2) @ m, torch.eye(3).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(4))


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="layer 0 gives 3 features but layer 1 expects 4"):
        ConformalEmbedding([ZeroPad(2, 3), ScaleShift(4)])
    with pytest.raises(ValueError, match="at least one layer"):
        ConformalEmbedding([])
    with pytest.raises(ValueError, match="one context dimension"):
        ConformalEmbedding([ConditionalScaleShift(3, 2), ConditionalScaleShift(3, 4)])
    with pytest.raises(ValueError, match="in_features <= out_features"):
        ZeroPad(3, 2)
    with pytest.raises(ValueError, match="orthogonal"):
        Orthogonal(3, init=2 * torch.eye(3))
    with pytest.raises(ValueError, match=r"expected shape \(3, 3\), got \(2, 2\)"):
        Orthogonal(3, init=torch.eye(2))
    with pytest.raises(ValueError, match="context >= 1"):
        ConditionalScaleShift(3, 0)
    with pytest.raises(ValueError, match=r"expected a context of shape \(N, 2\), got None"):
        ConditionalSpecialConformal(3, 2)(torch.randn(4, 3))


def test_a_rotation_is_computed_once_per_distinct_context():
    # a chart mixture conditions many rows on few chart codes: the matrix exponential runs per distinct code,
    # and values and gradients (to the weights and to the codes) equal the row-by-row computation
    from vqflows.flows.conformal import _distinct_rows, per_context
    rot = perturb(ConditionalRotation(3, C))
    codes = torch.randn(5, C, requires_grad=True)
    rows = torch.tensor([3, 0, 3, 1, 4, 4, 0, 3, 1, 3, 2, 0])
    inverse, count = _distinct_rows(codes[rows].detach())
    assert count == 5 and torch.equal(inverse[:, None] == inverse[None], rows[:, None] == rows[None])
    u = torch.randn(len(rows), 3)
    calls = []
    grouped = rot(u, codes[rows])
    torch.testing.assert_close(grouped, (rot._matrix(codes[rows]) @ u.unsqueeze(-1)).squeeze(-1))
    weights = [codes, *rot.parameters()]
    a = torch.autograd.grad(grouped.sin().sum(), weights)
    b = torch.autograd.grad(torch.stack([rot._matrix(codes[[r]])[0] @ u[i]
                                         for i, r in enumerate(rows.tolist())]).sin().sum(), weights)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    assert per_context(lambda c: calls.append(c.shape[0]) or c, codes[rows]).shape == (len(rows), C)
    assert calls == [5]
    per_context(lambda c: calls.append(c.shape[0]) or c, torch.randn(8, C))  # mostly distinct: as it is
    assert calls == [5, 8]
