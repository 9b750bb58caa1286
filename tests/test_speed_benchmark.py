"""The hand-written MAF that benchmarks/timing.py times as the floor is a valid autoregressive density."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("timing_benchmark", Path(__file__).parent.parent / "benchmarks" / "timing.py")
speed = sys.modules["timing_benchmark"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)


def _flow(context: int):
    torch.manual_seed(0)
    f = speed.HandMAF(3, context).double()
    with torch.no_grad():
        for p in f.parameters():
            p.normal_(0, 0.3)
    return f


def test_hand_maf_log_prob_matches_the_jacobian_determinant():
    f = _flow(2)
    x, c = torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)

    def to_noise(v):
        for made in f.mades:
            a, b = made(torch.cat([v, c])[None]).chunk(2, -1)
            a = a / (1 + a.abs() / f.clip)
            v = v * a.exp()[0] + b[0]
        return v

    z = to_noise(x)
    jac = torch.autograd.functional.jacobian(to_noise, x)
    ref = torch.linalg.slogdet(jac)[1] - 0.5 * (z.square().sum() + 3 * math.log(2 * math.pi))
    assert torch.allclose(f.log_prob(x[None], c[None]).detach(), ref, atol=1e-10)


def test_hand_maf_conditioners_are_autoregressive():
    f = _flow(0)
    x = torch.randn(3, dtype=torch.float64)
    for t, made in enumerate(f.mades):
        dep = torch.autograd.functional.jacobian(lambda v, m=made: m(v[None])[0], x).abs() > 0  # (2 D, D)
        order = torch.arange(3).flip(0) if t % 2 else torch.arange(3)
        allowed = order.repeat(2)[:, None] > order[None, :]
        assert not (dep & ~allowed).any()
