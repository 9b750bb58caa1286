"""The io module (overrides, atomic files, claims) and the job runner in this process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl
import torch

from vqflows import io
from vqflows.experiments.runner import Runner, Task


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 1e-3
    epochs: int = 10
    frames: bool = True
    name: str = "maf"
    m: int | None = None
    hidden: tuple[int, ...] = (64, 64)
    lrs: tuple[float, ...] = (3e-3,)
    layers: list[str] = dataclasses.field(default_factory=list)
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected an integer >= 1, got {self.epochs}")


# ------------------------------------------------------------------------------------------- overrides


def test_overrides_coerce_every_field_type():
    c = io.apply_overrides(Config(), ["lr=2", "epochs=3", "frames=false", "name=null", "m=4", "hidden=32,16",
                                      "lrs=[0.01, 0.001]", "layers=a,b", 'options={"bins": 8}'])
    assert c == Config(lr=2.0, epochs=3, frames=False, name="null", m=4, hidden=(32, 16), lrs=(0.01, 0.001),
                       layers=["a", "b"], options={"bins": 8})
    assert isinstance(c.lr, float) and c.lrs == (0.01, 0.001)
    # None where the type allows it; a single value for a tuple; values from a dict are checked too
    assert io.apply_overrides(Config(m=3), ["m=null"]).m is None
    assert io.apply_overrides(Config(), {"lrs": 0.002, "hidden": [8]}) == Config(lrs=(0.002,), hidden=(8,))
    assert io.apply_overrides(Config(), ["frames=True"]).frames is True


def test_overrides_reject_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="override: expected one of .*got 'epoch'"):
        io.apply_overrides(Config(), ["epoch=3"])
    with pytest.raises(ValueError, match="override: expected key=value, got 'epochs'"):
        io.apply_overrides(Config(), ["epochs"])
    with pytest.raises(ValueError, match="epochs: expected int, got 3.5"):
        io.apply_overrides(Config(), ["epochs=3.5"])
    with pytest.raises(ValueError, match="epochs: expected int, got True"):
        io.apply_overrides(Config(), {"epochs": True})
    with pytest.raises(ValueError, match="lr: expected float, got 'fast'"):
        io.apply_overrides(Config(), {"lr": "fast"})
    with pytest.raises(ValueError, match="frames: expected bool, got 1"):
        io.apply_overrides(Config(), ["frames=1"])
    with pytest.raises(ValueError, match="hidden: expected int, got 'x'"):
        io.apply_overrides(Config(), ["hidden=4,x"])
    with pytest.raises(ValueError, match="name: expected str, got 3"):
        io.apply_overrides(Config(), {"name": 3})
    with pytest.raises(ValueError, match="m: expected int, got 'two'"):
        io.apply_overrides(Config(), ["m=two"])
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got 0"):  # the config's own check
        io.apply_overrides(Config(), ["epochs=0"])
    with pytest.raises(ValueError, match="lr.x: expected a dict field"):
        io.apply_overrides(Config(), ["lr.x=3"])


def test_repeated_keys_accumulate():
    c = io.apply_overrides(Config(options={"tails": 3}),
                           ["hidden=32", "hidden=16", "options.bins=8", "options.bound=5.0", "epochs=2", "epochs=4"])
    assert c.hidden == (32, 16) and c.epochs == 4
    assert c.options == {"tails": 3, "bins": 8, "bound": 5.0}
    assert io.apply_overrides(Config(), ["layers=a", "layers=b,c"]).layers == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------ files


def test_atomic_writes_round_trip_and_leave_no_temporary_files(tmp_path):
    path = io.write_json(tmp_path / "a" / "m.json", {"x": np.float32(1.5), "bad": float("nan"), "t": (1, 2),
                                                     "p": tmp_path, "v": torch.tensor([1.0, 2.0])})
    assert io.read_json(path) == {"x": 1.5, "bad": None, "t": [1, 2], "p": str(tmp_path), "v": [1.0, 2.0]}
    assert io.read_json(tmp_path / "missing.json", default=[]) == []
    array = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(np.load(io.save_numpy(tmp_path / "a.npy", array)), array)
    state = {"w": torch.randn(3)}
    assert torch.equal(torch.load(io.save_torch(tmp_path / "w.pt", state))["w"], state["w"])
    assert io.write_text(tmp_path / "t.md", "é").read_text() == "é"
    io.write_json(path, [1])  # replacing an existing file
    assert io.read_json(path) == [1]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_hardware_describes_the_machine():
    hw = io.hardware()
    assert hw["cpu_count"] == os.cpu_count() and hw["torch"] == torch.__version__
    assert {"cpu", "usable_cores", "load_average", "python", "numpy", "scikit-learn", "platform", "gpu"} <= set(hw)


def test_claim_is_exclusive_released_and_taken_over_when_stale(tmp_path):
    with io.claim(tmp_path) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(ValueError, match=f"locked by pid {os.getpid()} on {socket.gethostname()}"), \
                io.claim(tmp_path):
            pass
    assert not lock.exists()
    # a claim left by a process that was killed is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "earlier"}))
    with io.claim(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # another host's claim is respected
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "earlier"}))
    with pytest.raises(ValueError, match="locked by pid 1 on elsewhere"), io.claim(tmp_path):
        pass


# ----------------------------------------------------------------------------------------------- runner


def square(spec: dict, folder: Path) -> dict:
    """A task: writes nothing itself, returns its record."""
    if spec["x"] < 0:
        raise ValueError(f"x: expected a number >= 0, got {spec['x']}")
    return {"record.json": {"x": spec["x"], "square": spec["x"] ** 2, "pid": os.getpid(),
                            "threads": torch.get_num_threads(), "blas": _blas_threads()}}


def _blas_threads() -> int:
    """The most threads any BLAS library under NumPy and SciPy may use now."""
    return max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


def _tasks(tmp_path: Path, fn, specs) -> list[Task]:
    return [Task(fn, spec, tmp_path / f"run-{i}", label=f"{tmp_path.name}/run-{i}") for i, spec in enumerate(specs)]


def test_runner_bounds_the_blas_threads_of_a_task(tmp_path):
    """A task runs with the runner's one thread in BLAS too (N workers each taking every core oversubscribe
    the machine); the driver's own setting is restored after an inline task."""
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        if before < 2:
            pytest.skip("a BLAS library limited to one thread here")
        Runner(progress=False).run(_tasks(tmp_path, square, [{"x": 1}]))
        assert io.read_json(tmp_path / "run-0" / "record.json")["blas"] == 1
        assert _blas_threads() == before


def test_inline_runner_and_bad_settings(tmp_path):
    report = Runner(progress=False).run(_tasks(tmp_path, square, [{"x": 5}]))
    assert io.read_json(tmp_path / "run-0" / "record.json")["pid"] == os.getpid()
    assert report.count() == 1 and not report.failures
    with pytest.raises(ValueError, match="jobs: expected an integer >= 1, got 0"):
        Runner(jobs=0)
    with pytest.raises(ValueError, match="gpus-per-run: expected --scheduler"):
        Runner(gpus_per_run=0.5)
    with pytest.raises(ValueError, match="gpus-per-run: expected a number >= 0, got -1"):
        Runner(scheduler="tcp://127.0.0.1:1", gpus_per_run=-1)
