"""Chart fitting whose cost does not grow with N: step budget, subsampled codebook placement, chunked passes."""

from __future__ import annotations

import torch

from vqflows import charts, datasets
from vqflows.charts import KMeansCharts, VQAutoencoder


def _plain_epochs_fit(ae: VQAutoencoder, x: torch.Tensor, *, epochs: int, warmup: int, batch_size: int,
                      lr: float, seed: int) -> list[float]:
    """Reference schedule: plain epochs over all points, k-means and restarts on all points at once."""
    from sklearn.cluster import KMeans

    def place(e):
        km = KMeans(ae.codes, n_init=1, random_state=seed).fit(e.detach().double().numpy())
        ae.codebook.data.copy_(torch.as_tensor(km.cluster_centers_, dtype=ae.codebook.dtype))

    @torch.no_grad()
    def restart():
        e = ae.encode(x)
        for _ in range(ae.codes):
            d2 = torch.cdist(e, ae.codebook).square()
            dead = (torch.bincount(d2.argmin(-1), minlength=ae.codes) == 0).nonzero().flatten()
            if len(dead) == 0:
                return
            dmin = d2.min(-1).values.double()
            ae.codebook[dead[0]] = e[torch.multinomial(dmin / dmin.sum(), 1, generator=gen)[0]]

    gen = torch.Generator().manual_seed(seed)
    ae.standardise.fit(x)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        if epoch == warmup:
            with torch.no_grad():
                place(ae.encode(x))
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            xb = x[perm[i:i + batch_size]]
            if epoch < warmup:
                loss = (ae.decoder(ae.encode(xb)) - ae.standardise(xb)).square().sum(-1).mean()
            else:
                loss = ae.loss(xb).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        if epoch >= warmup:
            restart()
        losses.append(total / len(x))
    restart()
    return losses


def test_vqae_on_5000_points_follows_the_plain_epoch_schedule_exactly():
    x = datasets.get("helix").sample(5000, seed=0)
    fitted, ref = [], []
    for out, fit in ((fitted, lambda ae: ae.fit(x, epochs=4, warmup=2, seed=3)),
                     (ref, lambda ae: _plain_epochs_fit(ae, x, epochs=4, warmup=2, batch_size=256, lr=2e-3, seed=3))):
        torch.manual_seed(0)
        ae = VQAutoencoder(3, 16, 3, hidden=(32,))
        out.append(fit(ae))
        out.append(ae.codebook.detach().clone())
    assert fitted[0] == ref[0]
    assert torch.equal(fitted[1], ref[1])


def test_vqae_step_budget_does_not_grow_with_n():
    steps = []
    for n in (1500, 6000, 24000):
        x = datasets.get("knotted").sample(n, seed=0)
        ae = VQAutoencoder(3, 8, 2, hidden=(16,))
        calls = []
        ae.decoder.register_forward_hook(lambda *a, calls=calls: calls.append(1))  # one decoder call per Adam step
        ae.fit(x, epochs=3, warmup=1, batch_size=500, points_per_epoch=3000, sample_points=2000, seed=0)
        steps.append(len(calls))
    assert steps == [3 * 3, 3 * 6, 3 * 6]


def test_vqae_large_n_is_seeded_and_uses_every_code():
    x = datasets.get("knotted").sample(8000, seed=1)

    def run():
        torch.manual_seed(0)
        ae = VQAutoencoder(3, 16, 3, hidden=(32,))
        losses = ae.fit(x, epochs=4, warmup=1, points_per_epoch=1000, sample_points=700, seed=2)
        return ae, losses

    (ae, losses), (ae2, losses2) = run(), run()
    assert losses == losses2 and torch.equal(ae.codebook, ae2.codebook)
    counts = torch.bincount(ae.distances(x).argmin(-1), minlength=16)
    assert (counts > 0).all(), counts  # the last restart looks at every point, not the subsample


def test_epochs_walk_one_permutation_before_repeating():
    walk = charts._EpochIndices(10, 4, torch.Generator().manual_seed(0))
    seen = torch.cat([walk.next() for _ in range(5)])
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    small = charts._EpochIndices(3, 4, torch.Generator().manual_seed(0))
    assert sorted(small.next().tolist()) == [0, 1, 2]


def test_draw_index_beyond_multinomial_limit_follows_p(monkeypatch):
    p = torch.tensor([0.0, 0.25, 0.0, 0.75], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    monkeypatch.setattr(charts, "_MULTINOMIAL_CATEGORIES", 2)
    draws = torch.tensor([charts._draw_index(p, gen) for _ in range(4000)])
    assert set(draws.tolist()) == {1, 3}
    assert abs(float((draws == 3).double().mean()) - 0.75) < 0.03


def test_chunked_distances_match_one_pass():
    x = datasets.get("helix").sample(300, seed=0)
    torch.manual_seed(0)
    ae = VQAutoencoder(3, 5, 3, hidden=(16,))
    ae.standardise.fit(x)
    assert torch.allclose(ae.distances(x, chunk=7), torch.cdist(ae.encode(x), ae.codebook).square())
    km = KMeansCharts(3, 4)
    km.fit(x, seed=0)
    assert torch.allclose(km.distances(x, chunk=7), km.distances(x))


def test_kmeans_large_n_fits_a_seeded_subsample_and_reports_full_inertia():
    from sklearn.cluster import KMeans

    x = datasets.get("interlocked-circles").sample(3000, seed=0)
    km = KMeansCharts(3, 6)
    loss = km.fit(x, seed=4, sample_points=1000)
    z = (x - x.mean(0)) / x.std(0)
    sub = z[torch.randperm(3000, generator=torch.Generator().manual_seed(4))[:1000]]
    ref = KMeans(6, n_init=3, random_state=4).fit(sub.double().numpy())
    assert torch.allclose(km.codebook, torch.as_tensor(ref.cluster_centers_, dtype=torch.float32), atol=1e-5)
    brute = ((z[:, None] - km.codebook[None]) ** 2).sum(-1).min(-1).values.double().mean()
    assert abs(loss[0] - float(brute)) < 1e-4
    small = KMeansCharts(3, 6)
    assert small.fit(x[:900], seed=4, sample_points=1000)[0] > 0


def test_points_per_epoch_none_makes_full_passes():
    x = datasets.get("knotted").sample(6000, seed=0)

    class FullPasses(VQAutoencoder):
        points_per_epoch = None

    ae = FullPasses(3, 8, 2, hidden=(16,))
    calls = []
    ae.decoder.register_forward_hook(lambda *a: calls.append(1))
    ae.fit(x, epochs=2, warmup=1, batch_size=1000, sample_points=2000, seed=0)
    assert len(calls) == 2 * 6
