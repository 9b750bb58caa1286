"""Chart partitioners: VQ autoencoder and k-means."""

from __future__ import annotations

import torch

from vqflows import datasets
from vqflows.charts import KMeansCharts, VQAutoencoder, chart_weights, membership


def test_vqae_uses_every_code_and_is_seeded():
    x = datasets.get("knotted").sample(1500, seed=0)

    def run():
        torch.manual_seed(0)
        ae = VQAutoencoder(3, 16, 3, hidden=(32,))
        losses = ae.fit(x, epochs=8, warmup=3, seed=1)
        return ae, losses

    ae, losses = run()
    counts = torch.bincount(ae.distances(x).argmin(-1), minlength=16)
    assert (counts > 0).all(), counts
    ae2, losses2 = run()
    assert losses == losses2 and torch.equal(ae.codebook, ae2.codebook)


def test_vqae_gradients_reach_encoder_decoder_and_codebook():
    x = datasets.get("helix").sample(256, seed=0)
    ae = VQAutoencoder(3, 8, 2, hidden=(16,))
    ae.standardise.fit(x)
    ae.loss(x).total.backward()
    for name, p in ae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vqae_training_reduces_reconstruction():
    x = datasets.get("helix").sample(1000, seed=0)
    torch.manual_seed(0)
    ae = VQAutoencoder(3, 16, 3, hidden=(32, 32))
    ae.standardise.fit(x)
    before = float(ae.loss(x).reconstruction.detach())
    ae.fit(x, epochs=30, warmup=10, batch_size=64, seed=0)
    assert float(ae.loss(x).reconstruction.detach()) < 0.5 * before


def test_kmeans_charts_agree_with_sklearn_assignment():
    x = datasets.get("interlocked-circles").sample(800, seed=0)
    km = KMeansCharts(3, 6)
    km.fit(x, seed=0)
    z = (x - x.mean(0)) / x.std(0)
    brute = ((z[:, None, :] - km.codebook[None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(km.distances(x).argmin(-1), brute)


def test_chart_weights_follow_equation_15():
    d2 = torch.rand(500, 5)
    member = membership(d2, 2)
    w = chart_weights(member)
    r = member.double().mean(0)
    assert torch.allclose(w, r / r.sum()) and abs(float(w.sum()) - 1) < 1e-12


def test_local_dimension_counts_the_directions_a_cell_spreads_in():
    from vqflows.charts import local_dimension
    g = torch.Generator().manual_seed(0)
    t = torch.rand(4000, generator=g) * 6.283
    circle = torch.stack([t.cos(), t.sin(), 0.005 * torch.randn(4000, generator=g)], -1)
    plane = torch.cat([torch.rand(4000, 2, generator=g), 0.005 * torch.randn(4000, 1, generator=g)], -1)
    ball = torch.randn(4000, 3, generator=g)
    dims = [local_dimension(x) for x in (circle, plane, ball)]
    assert 0.9 < dims[0] < 1.2 and 1.8 < dims[1] < 2.2 and 2.5 < dims[2] <= 3.0, dims
    assert local_dimension(circle, seed=3) == local_dimension(circle, seed=3)  # seeded
    assert local_dimension(circle[:5]) >= 1.0  # too few points for 32 cells: fewer cells


def test_the_stacked_default_sums_two_charts_per_point_on_curves_and_four_on_surfaces():
    from vqflows.config import RunConfig
    from vqflows.selection import stack_top
    assert stack_top(datasets.load("helix", n=4000, seed=0).train) == 2
    assert stack_top(datasets.load("knotted", n=4000, seed=1).train) == 2
    assert stack_top(datasets.load("spherical", n=4000, seed=0).train) == 4
    assert RunConfig().top is None and RunConfig().training().top == 4  # resolved from the data in the run
    assert RunConfig(top=3).training().top == 3
