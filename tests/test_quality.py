"""Quality checks that train for a while (``-m slow``): each prints its figures and checks its target.

    python -m pytest -m slow tests/test_quality.py -s
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from vqflows.flows.cef import BETA, CEF
from vqflows.vmf import vmf_log_prob, vmf_sample

CAP_MEANS = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
CAP_KAPPA = 8.0


def _caps(n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` directions from the equal mixture of three von Mises–Fisher caps."""
    counts = rng.multinomial(n, [1 / 3] * 3)
    x = torch.cat([vmf_sample(mu, CAP_KAPPA, int(k), rng) for mu, k in zip(CAP_MEANS, counts)])
    return x[torch.from_numpy(rng.permutation(n))]


def fit_cef_to_caps(beta: float = BETA, epochs: int = 60, seed: int = 0, n: int = 5000) -> dict[str, float]:
    """A plain CEF fitted to three vMF caps on the unit sphere, the way a chart hands points over (centred,
    rotated onto their principal directions, divided by one scale), starting from the plane through the
    sphere's centre: it must bend the plane into the sphere. Returns the mean distance of held-out points to
    the learned manifold relative to the radius, the held-out and true log-likelihoods and the seconds."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, test = _caps(n, rng), _caps(2500, rng)
    mean = train.mean(0)
    _, s, vt = torch.linalg.svd(train - mean, full_matrices=False)
    scale = float(s[0] / math.sqrt(len(train)))
    to_local = lambda x: ((x - mean) @ vt.T / scale).float()
    flow = CEF(features=3, context=0, manifold_dim=2, beta=beta)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    local, start = to_local(train), time.perf_counter()
    for _ in range(epochs):
        for batch in local[torch.randperm(len(local))].split(256):
            loss = flow.loss(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        local_test = to_local(test)
        error = flow.reconstruction(local_test).sqrt().mean().item() * scale
        # back to the unit sphere's area measure: a length scale s divides a 2-D density by s²
        held_out = (flow.log_prob(local_test).double() - 2 * math.log(scale)).mean().item()
    truth = (torch.logsumexp(vmf_log_prob(test, CAP_MEANS, torch.full((3,), CAP_KAPPA)), dim=1) - math.log(3)).mean()
    return {"error_over_radius": error, "held_out": held_out, "true": float(truth), "seconds": seconds}


@pytest.mark.slow
def test_cef_recovers_the_sphere_from_a_plane():
    """Target: mean distance to the learned sphere < 1% of the radius, held-out likelihood near the truth."""
    r = fit_cef_to_caps()
    print(f"\nCEF on three vMF caps (beta {BETA:g}, 60 epochs, seed 0): error/radius {r['error_over_radius']:.4f}, "
          f"held-out {r['held_out']:.3f} nats (true mixture {r['true']:.3f}), {r['seconds']:.1f} s")
    assert r["error_over_radius"] < 0.01
    assert abs(r["held_out"] - r["true"]) < 0.15


@pytest.mark.slow
def test_default_is_at_least_the_better_classical_estimate(tmp_path):
    """The classical table of docs/results.md in small (helix, seed 0, 6,000 points): the default
    ``vq-maf`` (``partition="auto"``: flows started at the validated Gaussian mixture) ends below the
    kernel density's gap to the oracle and no worse than the validated mixture's. The full table:
    ``vqflows benchmark --table 1 --models gmm,kde,vq-maf --trials 1``."""
    from vqflows.runs import RunConfig, train_run

    torch.set_num_threads(1)
    gaps = {}
    for model in ("gmm", "kde", "vq-maf"):
        config = RunConfig(dataset="helix", model=model, seed=0).with_overrides({"n": 6000})
        gaps[model] = train_run(config, tmp_path / model)["gap_to_oracle"]
    print(gaps)
    assert gaps["vq-maf"] < gaps["kde"]
    assert gaps["vq-maf"] <= gaps["gmm"] + 0.005
