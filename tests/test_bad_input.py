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
