"""Would training the stacked default's members together be faster? The cost of one member's step, measured.

    python benchmarks/member_batching.py            # about 1 min on one core

A member of the default VQ-MAF is a conditional zuko MAF (5 transforms, hidden layers of 64, a 3-D chart
code as context) trained on batches of 512 points, each under its 2 nearest charts (1,024 rows a step on
curves). Two questions, answered with one torch thread, medians of interleaved rounds in one process:

1. **Fixed cost of a step.** A step (forward, backward, fused Adam) at 128 to 4,096 rows: the time not
   proportional to the rows is what one step of several members together could share.
2. **Members side by side.** ``M`` such flows (1, 2, 4, 8) stepped one after another against all ``M`` in
   one vectorised step (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``, the way to run
   equally shaped models as one); the line prints the ratio vectorised / one after another (< 1: faster).

The members of a run stop at different epochs (on the knot at seed 0 after 46, 34, 27, 5, 46, 36, 35 and 6),
so a vectorised step would hold all eight only at the start of training and two to four for most of it.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import zuko
from torch.func import functional_call, stack_module_state, vmap

ROWS = 1024


class _Member(torch.nn.Module):
    """A member's chart map as the default builds it: log-density of points ``(N, 3)`` under codes ``(N, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = zuko.flows.MAF(3, 3, transforms=5, hidden_features=(64, 64))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.flow(c).log_prob(x)


def one_after_another(m: int, rows: int = ROWS):
    """``m`` members, each stepped as a run steps it: its own forward, backward and Adam step."""
    members = [_Member() for _ in range(m)]
    opts = [torch.optim.Adam(member.parameters(), 1e-3, fused=True) for member in members]
    x, c = torch.randn(m, rows, 3), torch.randn(m, rows, 3)

    def step() -> None:
        for member, opt, xi, ci in zip(members, opts, x, c):
            loss = -member(xi, ci).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def vectorised(m: int, rows: int = ROWS):
    """``m`` members stepped as one: one forward through ``vmap`` over their stacked weights, one backward, one Adam step."""
    members = [_Member() for _ in range(m)]
    params, buffers = stack_module_state(members)
    shape = copy.deepcopy(members[0]).to("meta")
    batched = vmap(lambda p, b, x, c: functional_call(shape, (p, b), (x, c)))
    opt = torch.optim.Adam(list(params.values()), 1e-3, fused=True)
    x, c = torch.randn(m, rows, 3), torch.randn(m, rows, 3)

    def step() -> None:
        loss = -batched(params, buffers, x, c).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _median_ms(step, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(rounds: int = 7) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = (128, 256, 512, 1024, 2048, 4096)
    steps = {n: one_after_another(1, n) for n in sizes}
    for step in steps.values():
        step()
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            times[n].append(_median_ms(steps[n]))
    print("one member's step (forward, backward, fused Adam), one thread:")
    for n in sizes:
        ms = statistics.median(times[n])
        print(f"  {n:5d} rows: {ms:6.2f} ms  ({ms * 1024 / n:5.2f} ms per 1,024 rows)")
    print(f"members one after another against one vectorised step ({ROWS} rows each):")
    for m in (1, 2, 4, 8):
        a, b = one_after_another(m), vectorised(m)
        a(), b()
        ta, tb = [], []
        for _ in range(rounds):
            ta.append(_median_ms(a))
            tb.append(_median_ms(b))
        print(f"  M = {m}: {statistics.median(ta):6.1f} ms against {statistics.median(tb):6.1f} ms, "
              f"ratio {statistics.median(y / x for x, y in zip(ta, tb)):.2f}")


if __name__ == "__main__":
    main()
