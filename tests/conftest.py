"""Fixtures shared by the test modules."""

import pytest
import torch

# two cores: one thread per process keeps timings steady and tests fast
torch.set_num_threads(1)


@pytest.fixture
def eight_gigabytes(monkeypatch):
    """A machine with 8 GB available, whatever this one has; should the check ever be bypassed, the address
    space is capped too, so that a test fails at once instead of filling this machine's memory."""
    import resource

    from vqflows import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 8 * 10**9)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as handle:
        used = int(handle.read().split()[0]) * resource.getpagesize()
    cap = used + 8 * 10**9
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
