"""Bad input on the command line: exit code 2 with one line naming what was expected, and nothing lost."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vqflows.cli import main
from vqflows.runs import RunConfig, train_run

TINY_CLI = ["--epochs", "1", "--quiet", "--set", "n=200", "charts=2", "partition=vqae", "chart_epochs=1", "hidden=8", "transforms=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train_run(RunConfig(dataset="helix", n=200, epochs=1, charts=2, partition="vqae", chart_epochs=1, hidden=8, transforms=1), out)
    return out


@pytest.fixture
def broken(run, tmp_path):
    """A copy of the trained run, to corrupt."""
    return shutil.copytree(run, tmp_path / "broken")


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqflows ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.mark.parametrize("write, fragments", [
    (lambda p: np.save(p, np.zeros((0, 3), np.float32)), ["expected at least 10 points, got 0"]),
    (lambda p: p.write_bytes(b""), ["got an empty file"]),
    (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"\x00"), ["expected a NumPy .npy array"]),
    (lambda p: np.save(p, np.ones((300, 3), np.float32)), ["expected data with non-zero spread, got constant values"]),
    (lambda p: np.save(p, np.c_[np.random.default_rng(0).normal(size=(300, 2)), np.ones(300)]),
     ["non-zero spread in every column", "[2]"]),
], ids=["no-rows", "empty-file", "truncated", "constant", "constant-column"])
def test_bad_data_files(write, fragments, tmp_path, capsys):
    path = tmp_path / "data.npy"
    write(path)
    before = path.read_bytes()
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "r"), *TINY_CLI, "--set", "n=null"]) == 2
    err = _one_line_error(capsys, str(path), *fragments)
    assert "learning rate" not in err  # that hint belongs to divergence only
    assert path.read_bytes() == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("corrupt, fragments", [
    (lambda r: (r / "model" / "weights.pt").write_bytes(b""), ["weights.pt: expected a state_dict saved by vqflows", "unreadable"]),
    (lambda r: (r / "model" / "weights.pt").write_bytes((r / "model" / "weights.pt").read_bytes()[:2000]),
     ["weights.pt: expected a state_dict saved by vqflows"]),
    (lambda r: (r / "config.json").write_text(json.dumps({**json.loads((r / "config.json").read_text()),
                                                          "colour": "red"})),
     ["config.json: expected only run settings", "unknown key(s) 'colour'"]),
    (lambda r: (r / "config.json").write_text(json.dumps({**json.loads((r / "config.json").read_text()),
                                                          "charts": "many"})),
     ["config.json: charts: expected a positive int or 'auto'"]),
    (lambda r: (r / "config.json").write_text("{"), ["config.json: expected a JSON object"]),
    (lambda r: (r / "model" / "config.json").write_text("[1, 2"), ["config.json: expected a JSON model recipe"]),
    (lambda r: shutil.rmtree(r / "model"), ["expected a folder with config.json and weights.pt"]),
], ids=["empty-weights", "truncated-weights", "unknown-key", "wrong-type", "bad-json", "bad-model-json", "no-model"])
def test_corrupt_run_folders(corrupt, fragments, broken, tmp_path, capsys):
    corrupt(broken)
    assert main(["evaluate", str(broken)]) == 2
    _one_line_error(capsys, *fragments)
    assert main(["sample", str(broken), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 2
    _one_line_error(capsys, *fragments)
    assert not (tmp_path / "s.npy").exists()


def test_sample_out_paths(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(run), "-n", "4", "--out", "s.txt"]) == 0
    assert f"to {tmp_path / 's.txt'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.txt"]  # exactly the named file, as text
    assert np.loadtxt(tmp_path / "s.txt").shape == (4, 3)
    assert main(["sample", str(run), "-n", "4", "--out", "s.csv"]) == 0
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (4, 3)
    assert main(["sample", str(run), "-n", "4", "--out", "s.npy"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 3)
    capsys.readouterr()

    before = (tmp_path / "s.txt").read_bytes()
    assert main(["sample", str(run), "-n", "9", "--out", "s.txt"]) == 2
    _one_line_error(capsys, "out: expected a new file", "--overwrite")
    assert (tmp_path / "s.txt").read_bytes() == before
    assert main(["sample", str(run), "-n", "9", "--out", "s.txt", "--overwrite"]) == 0
    assert np.loadtxt(tmp_path / "s.txt").shape == (9, 3)

    assert main(["sample", str(run), "--out", "/no/such/folder/x.npy"]) == 2
    _one_line_error(capsys, "out: expected a file in an existing folder", "/no/such/folder")
    assert main(["sample", str(run), "--out", "s.dat"]) == 2
    _one_line_error(capsys, "out: expected a file ending in .npy, .csv or .txt")
    assert main(["sample", str(run), "-n", "0"]) == 2
    _one_line_error(capsys, "n: expected an integer >= 1, got 0")


def test_a_finished_run_is_not_overwritten(run, capsys):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--out", str(run), *TINY_CLI]) == 2
    _one_line_error(capsys, "finished run", "overwrite")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--overwrite", *TINY_CLI]) == 2
    _one_line_error(capsys, "--resume: expected either --resume or --overwrite, got both")


def test_a_sphere_model_refuses_data_off_the_sphere(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--model", "vq-sphere", "--out", str(out), *TINY_CLI]) == 2
    _one_line_error(capsys, "helix (training split): expected points on the unit sphere (| |x| - 1 | <= 0.001)", "x / |x|")
    assert not out.exists()


@pytest.mark.parametrize("make, fragments", [
    (lambda: np.repeat(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), 150, axis=0), ["2 distinct point(s)"]),
    (lambda: np.random.default_rng(0).normal(size=(200, 1000)), ["of 1000 columns", "fewer columns"]),
    (lambda: np.random.default_rng(0).normal(size=(64, 3)), ["at least 128 distinct points for 32 charts",
                                                             "use charts=8 or fewer"]),
], ids=["two-distinct-points", "more-columns-than-rows", "too-few-for-32-charts"])
def test_degenerate_data_files_are_refused(make, fragments, tmp_path, capsys):
    path = tmp_path / "data.csv"
    np.savetxt(path, make(), delimiter=",")
    # the defaults a user gets (32 charts), refused before anything is trained or written
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    _one_line_error(capsys, str(path), *fragments)
    assert not (tmp_path / "r").exists()


def test_unknown_flow_options_are_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY_CLI, "--set", "flow_options.foo=1"]) == 2
    _one_line_error(capsys, "flow_options: expected options of flow 'maf' among randperm, passes, got 'foo'")
    assert not (tmp_path / "r").exists()


def test_a_csv_first_row_with_text_is_named(tmp_path, capsys):
    path = tmp_path / "data.csv"
    points = np.random.default_rng(0).normal(size=(300, 3))
    path.write_text("1.5,n/a,2\n" + "\n".join(",".join(map(str, p)) for p in points))
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "r"), *TINY_CLI, "--set", "n=null"]) == 2
    _one_line_error(capsys, "line 1, column 2: expected a number, got 'n/a'")


def test_a_pandas_index_is_dropped_with_a_one_line_warning(tmp_path, capsys):
    path = tmp_path / "data.csv"
    points = np.random.default_rng(0).normal(size=(300, 3))
    path.write_text(",a,b,c\n" + "\n".join(f"{i}," + ",".join(map(str, p)) for i, p in enumerate(points)))
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "r"), *TINY_CLI, "--set", "n=null"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqflows train: warning: ") and "row index" in err, err
    assert json.loads((tmp_path / "r" / "data.json").read_text())["features"] == 3


def test_sizes_beyond_memory_are_refused_before_allocating(run, tmp_path, capsys, eight_gigabytes):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY_CLI, "--set", "n=1000000000"]) == 2
    _one_line_error(capsys, "n: expected a size that fits in memory, got 1000000000", "GB for drawing", "available")
    assert not (tmp_path / "r").exists()
    assert main(["sample", str(run), "-n", "2000000000", "--out", str(tmp_path / "s.npy")]) == 2
    _one_line_error(capsys, "n: expected a size that fits in memory, got 2000000000", "GB", "8 GB available")
    assert not (tmp_path / "s.npy").exists()


def test_sample_out_under_a_file_or_naming_a_folder(run, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "file" / "s.npy")]) == 2
    _one_line_error(capsys, "out: expected a file in an existing folder", "is a file, not a folder")
    folder = tmp_path / "folder.npy"
    (folder / "inside").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        assert main(["sample", str(run), "-n", "3", "--out", str(folder), *extra]) == 2
        _one_line_error(capsys, "out: expected a file name, got the folder")
    assert (tmp_path / "file").read_text() == "mine" and (folder / "inside").is_dir()


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write fails as on a full disk, after its temporary file was created."""
    import errno
    import os as _os

    from vqflows import io

    real = _os.fdopen

    class Full:
        def __init__(self, fd):
            self.handle = real(fd, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode="r", *a, **k: Full(fd) if "w" in mode else real(fd, mode))


def test_a_full_disk_is_one_line_and_loses_nothing(run, tmp_path, capsys, full_disk):
    samples = tmp_path / "s.npy"
    samples.write_bytes(b"precious")
    assert main(["sample", str(run), "-n", "5", "--out", str(samples), "--overwrite"]) == 2
    _one_line_error(capsys, "No space left on device", "no file was left half-written")
    assert samples.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]
    assert main(["train", "--out", str(tmp_path / "r"), *TINY_CLI]) == 2
    _one_line_error(capsys, "No space left on device")
    assert not [p for p in (tmp_path / "r").rglob("*") if p.is_file()]  # no half-written run is left
    assert samples.read_bytes() == b"precious"
