"""Seeded fuzzing of the input boundary: a clear error or a finite result, and no file lost.

``checks.as_points`` gets arrays of many shapes (sizes 0-3), dtypes, NaN/inf and huge values;
``fit`` at 16 and 32 charts gets point sets that are small, duplicated, constant in a column or
widely scaled; the command line gets data files and run folders corrupted at random.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import vqflows
from vqflows.checks import as_points
from vqflows.cli import main
from vqflows.runs import RunConfig, train_run

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_, np.complex64]
VALUES = [0.0, 1.0, -2.5, 1e-30, 1e30, -1e30, 3.4e38, 1e300, -1e300, float("nan"), float("inf"), float("-inf")]


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    size = int(np.prod(shape))
    values = np.array(draw(st.lists(st.sampled_from(VALUES), min_size=size, max_size=size)), np.float64)
    dtype = draw(st.sampled_from(DTYPES))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting NaN/inf to integers warns; the result is still valid input
        array = values.astype(dtype).reshape(shape)
    kind = draw(st.sampled_from(["numpy", "tensor", "list"]))
    if kind == "tensor" and dtype not in (np.uint16, np.uint32, np.uint64):
        return torch.from_numpy(array)
    return array.tolist() if kind == "list" else array


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(x=arrays(), features=st.sampled_from([None, 1, 2, 3]), min_points=st.integers(0, 3),
       dtype=st.sampled_from([None, torch.float32, torch.float64]))
def test_as_points_gives_a_clear_error_or_finite_points(x, features, min_points, dtype):
    try:
        out = as_points(x, features, name="x", min_points=min_points, dtype=dtype)
    except ValueError as e:
        message = str(e)
        assert message.startswith("x: expected ") and ", got " in message and "\n" not in message, message
        return
    assert isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim() == 2
    assert out.shape[0] >= min_points and (features is None or out.shape[1] == features)
    assert bool(torch.isfinite(out).all())
    assert dtype is None or out.dtype == dtype
    assert out.shape == tuple(np.shape(np.asarray(x)))


def _corruptions(rng: random.Random, good: bytes) -> list[bytes]:
    """Damaged versions of a file's bytes: empty, cut, noise, flipped bytes."""
    out = [b"", good[: rng.randrange(1, len(good))], bytes(rng.randrange(256) for _ in range(64))]
    for _ in range(3):
        damaged = bytearray(good)
        for _ in range(rng.randrange(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        out.append(bytes(damaged))
    return out


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_corrupt_data_files_through_the_cli(suffix, tmp_path, capsys):
    rng = random.Random(0)
    points = np.random.default_rng(0).normal(size=(60, 2))
    good = tmp_path / f"good{suffix}"
    if suffix == ".npy":
        np.save(good, points)
    else:
        np.savetxt(good, points, delimiter=",", header="a,b")
    for i, data in enumerate(_corruptions(rng, good.read_bytes())):
        path = tmp_path / f"bad{i}{suffix}"
        path.write_bytes(data)
        out = tmp_path / f"run{i}"
        rc = main(["train", "--dataset", str(path), "--model", "maf", "--out", str(out), "--json", "--quiet",
                   "--epochs", "1", "--set", "hidden=8", "transforms=1"])
        captured = capsys.readouterr()
        assert path.read_bytes() == data  # the user's file is never touched
        if rc == 2:
            assert captured.err.count("\n") == 1 and "expected" in captured.err, captured.err
            assert not out.exists()
        else:
            assert rc == 0, captured.err
            assert np.isfinite(json.loads(captured.out)["test_log_likelihood"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    train_run(RunConfig(dataset="helix", n=200, epochs=1, charts=2, partition="vqae", chart_epochs=1, hidden=8, transforms=1), out)
    return out


@pytest.mark.parametrize("target", ["model/weights.pt", "model/config.json", "config.json"])
def test_corrupt_run_files_through_the_cli(target, run, tmp_path, capsys):
    rng = random.Random(target)
    for i, data in enumerate(_corruptions(rng, (run / target).read_bytes())):
        broken = shutil.copytree(run, tmp_path / f"broken{i}")
        (broken / target).write_bytes(data)
        before = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
        samples = tmp_path / f"s{i}.npy"
        samples.write_bytes(b"precious")
        for argv in (["evaluate", str(broken), "--json"],
                     ["sample", str(broken), "-n", "5", "--out", str(samples)],
                     ["train", "--out", str(broken), "--quiet", "--epochs", "1"]):
            rc = main(argv)
            captured = capsys.readouterr()
            if rc == 2:
                assert captured.err.count("\n") == 1 and "expected" in captured.err, captured.err
            else:  # a byte flip the formats tolerate: the result must still be a finite score
                assert rc == 0 and argv[0] == "evaluate", (argv, captured.err)
                assert np.isfinite(json.loads(captured.out)["test_log_likelihood"])
        assert samples.read_bytes() == b"precious"
        assert {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()} == before


@st.composite
def training_sets(draw):
    """Points for a K-chart model: few or many rows, duplicated rows, constant columns, wide or narrow scales."""
    features = draw(st.integers(1, 4))
    distinct = draw(st.sampled_from([1, 2, 16, 40, 150, 300]))
    repeats = draw(st.sampled_from([1, 3]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(distinct, features)) * scale, repeats, axis=0)
    if features > 1 and draw(st.sampled_from([False, False, True])):
        x[:, draw(st.integers(0, features - 1))] = draw(st.sampled_from([0.0, 7.5]))
    return x.astype(np.float32)


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(x=training_sets(), charts=st.sampled_from([16, 32]))
def test_fit_at_many_charts_gives_a_clear_error_or_a_finite_model(x, charts):
    torch.manual_seed(0)
    model = vqflows.build(x.shape[1], "maf", charts=charts, transforms=1, hidden_features=(8, 8))
    try:
        history = vqflows.fit(model, x, epochs=1, chart_epochs=1, batch_size=256)
    except ValueError as e:
        message = str(e)
        event(f"refused: {message.split(',')[0]}")
        assert message.startswith("train: expected ") and ", got " in message and "\n" not in message, message
        return
    event("fitted")
    assert history.epochs == 1 and model.K == charts
    assert bool(torch.isfinite(model.log_prob(x)).all())
