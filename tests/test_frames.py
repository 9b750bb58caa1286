"""Chart frames: maps with their log-determinants, per-chart fits, grouped application, trim, kinds, devices."""

from __future__ import annotations

import math

import pytest
import torch

from vqflows.frames import ChartFrames, trim_threshold


def _data(n=400, d=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)).double()
    member = torch.zeros(n, k, dtype=torch.bool)
    member[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = True
    member[:60, 2] = True  # overlapping charts
    return x, member


def test_map_returns_log_det_and_inverts():
    x, member = _data()
    frames = ChartFrames(5, 6).double()
    frames.fit(x, member)
    k = torch.randint(0, 5, (400,))
    y, logdet = frames(x, k)
    for i in range(0, 400, 97):  # log|det A_k| against autograd
        J = torch.autograd.functional.jacobian(lambda v: frames(v[None], k[i:i + 1])[0][0], x[i])
        assert float(torch.linalg.slogdet(J)[1]) == pytest.approx(float(logdet[i]), abs=1e-10)
    back, inv_logdet = frames.inverse(y, k)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv_logdet, -logdet)


def test_grouped_application_equals_per_row_gather():
    """Above 16 features each A_k is applied once to its rows; the result equals the per-row gather."""
    x, member = _data(300, 20, 4)
    frames = ChartFrames(4, 20).double()
    frames.fit(x, member, trim=None)
    k = torch.randint(0, 4, (300,))
    y, _ = frames(x, k)
    torch.testing.assert_close(y, torch.einsum("mij,mj->mi", frames.matrix[k], x - frames.shift[k]))
    torch.testing.assert_close(frames.inverse(y, k)[0], x)


def test_fitting_in_chunks_equals_one_fit(monkeypatch):
    """Weighted membership (responsibilities) is fitted a few charts at a time, as one fit would."""
    x, member = _data()
    member = member.double() * 0.5 + 0.25 * torch.rand(member.shape, generator=torch.Generator().manual_seed(1))
    whole = ChartFrames(5, 6).double()
    whole.fit(x, member, trim=None)
    import vqflows.frames as frames_module

    parts = ChartFrames(5, 6).double()
    real = frames_module.ChartFrames._fit_columns
    calls = []
    monkeypatch.setattr(frames_module.ChartFrames, "_fit_columns",
                        lambda self, x, m, *a: calls.append(m.shape[1]) or real(self, x, m, *a))
    # force two charts at a time by shrinking the working-memory budget
    n, d = x.shape
    monkeypatch.setattr(frames_module, "_CHUNK_VALUES", 2 * n * d, raising=False)
    parts.fit(x, member, trim=None)
    assert calls == [2, 2, 1]
    for name in ("shift", "matrix", "inverse_matrix", "logdet"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name))


def test_shared_membership_fits_one_frame():
    x, _ = _data()
    frames = ChartFrames(5, 6).double()
    frames.fit(x, torch.ones(400, 5, dtype=torch.bool), trim=None)
    assert torch.equal(frames.matrix, frames.matrix[:1].expand_as(frames.matrix))
    cov = torch.cov(x.T)
    # whitening: A Σ Aᵀ = I up to the shrinkage prior (4 pseudo-points of the same covariance)
    torch.testing.assert_close(frames.matrix[0] @ cov @ frames.matrix[0].T, torch.eye(6, dtype=torch.float64) * 399 / 400
                               , atol=0.02, rtol=0)


def test_trim_scales_with_dimension():
    """Whitened 64-D points have ‖y‖² ≈ 64: a fixed 3-D cut-off of 16 would trim them all; χ²_D does not."""
    assert trim_threshold(3) == pytest.approx(16.0, abs=1e-9)
    assert trim_threshold(64) > 90
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000, 64), 10.0 + 2.0 * torch.randn(1000, 64)]).double()
    member = torch.zeros(2000, 2, dtype=torch.bool)
    member[:1000, 0] = member[1000:, 1] = True
    frames = ChartFrames(2, 64).double()
    frames.fit(x, member)
    torch.testing.assert_close(frames.logdet, torch.tensor([0.0, -64 * math.log(2.0)], dtype=torch.float64),
                               atol=2.0, rtol=0)


def test_similarity_and_rotation_kinds():
    x, member = _data(400, 3, 3)
    frames = ChartFrames(3, 3).double()
    frames.fit(x, member, kind="similarity", dim=2)
    for k in range(3):  # A_k = Uᵀ/s: a scaled rotation
        a = frames.matrix[k]
        s2 = float((a @ a.T)[0, 0])
        torch.testing.assert_close(a @ a.T, s2 * torch.eye(3, dtype=torch.float64))
        assert float(frames.logdet[k]) == pytest.approx(0.5 * 2 * math.log(s2), abs=1e-10)
    u = torch.nn.functional.normalize(x, dim=-1)
    axis = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    frames.fit(u, member, kind="rotation", axis=axis)
    for k in range(3):
        mean = u[member[:, k]].sum(0)
        turned = frames.matrix[k] @ (mean / mean.norm())
        torch.testing.assert_close(turned, axis)
        assert float(torch.linalg.det(frames.matrix[k])) == pytest.approx(1.0)
    assert torch.equal(frames.logdet, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="kind: expected one of"):
        frames.fit(x, member, kind="shear")
    with pytest.raises(ValueError, match=r"member: expected shape \(400, 3\)"):
        frames.fit(x, member[:, :2])


def test_fit_keeps_dtype_and_follows_the_data_device():
    """Fitting builds no tensor on a fixed device: float32 frames fitted from float64 data stay float32,
    and a module built on the CPU and moved with .to() fits on its new device (meta data checks shapes)."""
    x, member = _data()
    frames = ChartFrames(5, 6)
    frames.fit(x, member)
    assert frames.matrix.dtype == torch.float32
    y, logdet = frames(x.float(), torch.zeros(400, dtype=torch.long))
    assert y.dtype == logdet.dtype == torch.float32


@pytest.mark.parametrize("kind, dim", [("whitening", None), ("similarity", 2)])
def test_member_pair_fit_equals_the_dense_fit(monkeypatch, kind, dim):
    """Many points take the sparse path (sums over member pairs); it gives the dense path's frames."""
    import vqflows.frames as frames_module

    x, member = _data(600, 3, 5)
    member[:, 2] = False
    member[torch.arange(0, 600, 7), 2] = True  # a chart with overlap
    dense = ChartFrames(5, 3).double()
    dense.fit(x, member, kind=kind, dim=dim)
    monkeypatch.setattr(frames_module, "_CHUNK_VALUES", 10)
    sparse = ChartFrames(5, 3).double()
    sparse.fit(x, member, kind=kind, dim=dim)
    for name in ("shift", "matrix", "inverse_matrix", "logdet"):
        torch.testing.assert_close(getattr(sparse, name), getattr(dense, name), rtol=1e-10, atol=1e-10)
