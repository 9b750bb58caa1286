"""Run folders: overwrite replaces a run only with a finished one, a run's files are fingerprinted and
checked by evaluate, interrupted runs say so, files honour the umask, absurd thread counts are refused."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from vqflows import datasets, fit
from vqflows.cli import main
from vqflows.model import VQFlow
from vqflows.runs import RunConfig, RunInterrupted, train_run

TINY = {"dataset": "helix", "n": 200, "epochs": 2, "charts": 2, "partition": "vqae", "chart_epochs": 1, "hidden": 8,
        "transforms": 1}
TINY_CLI = ["--epochs", "2", "--quiet", "--set", "n=200", "charts=2", "partition=vqae", "chart_epochs=1", "hidden=8",
            "transforms=1"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture
def finished(tmp_path, capsys):
    """A finished run, with a file of the user's beside it."""
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *TINY_CLI]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    return out


# ------------------------------------------------------------------------------------------- overwrite

def test_overwrite_that_diverges_keeps_the_old_run(finished, capsys):
    before = _files(finished)
    assert main(["train", "--out", str(finished), "--overwrite", *TINY_CLI, "--set", "lr=1e8", "batch_size=10"]) == 2
    _one_line(capsys, "non-finite training loss")
    assert _files(finished) == before and not any(p.name.startswith(".") for p in finished.iterdir())


def test_overwrite_interrupted_keeps_the_old_run(finished):
    before = _files(finished)

    def stop(epoch, model, history):
        raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match="nothing replaced"):
        train_run(RunConfig(**{**TINY, "seed": 1}), finished, overwrite=True, callback=stop)
    assert _files(finished) == before


def test_overwrite_on_a_full_disk_keeps_the_old_run(finished, monkeypatch):
    before = _files(finished)

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VQFlow, "save", full)
    with pytest.raises(OSError, match="No space left"):
        train_run(RunConfig(**{**TINY, "seed": 1}), finished, overwrite=True)
    assert _files(finished) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_overwrite_killed_keeps_the_old_run(finished, capsys):
    before = _files(finished)
    from test_resume import run_killed

    argv = ["train", "--out", str(finished), "--overwrite", "--seed", "1", *TINY_CLI]
    assert run_killed(argv, epoch=1) == -signal.SIGKILL
    left = {k: v for k, v in _files(finished).items() if k in before}
    assert left == before  # the old run untouched; the killed one lies in a hidden folder beside it
    assert main(["evaluate", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "finished"
    assert main(["train", "--out", str(finished), "--overwrite", "--seed", "1", *TINY_CLI]) == 0
    assert sorted(p.name for p in finished.iterdir() if p.name.startswith(".")) == []  # leftovers cleared
    assert json.loads((finished / "config.json").read_text())["seed"] == 1


def test_overwrite_replaces_a_finished_run_and_keeps_the_users_files(finished):
    old = _files(finished)
    metrics = train_run(RunConfig(**{**TINY, "seed": 1}), finished, overwrite=True)
    new = _files(finished)
    assert json.loads(new["config.json"])["seed"] == 1 and json.loads(new["metrics.json"]) == pytest.approx(metrics)
    assert new["model/weights.pt"] != old["model/weights.pt"] and new["notes.txt"] == b"mine"
    assert set(new) == set(old)  # nothing of the old run left over, nothing hidden left behind
    assert not (finished / ".lock").exists()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"], ["--resume"]])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, overwrite):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "config.json").write_text('{"lr": 1}')
    (out / "model" / "weights.pt").write_bytes(b"my weights")
    before = _files(out)
    assert main(["train", "--out", str(out), *overwrite, *TINY_CLI]) == 2
    _one_line(capsys, "not written by a vqflows run", "config.json, model/")
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == ["config.json", "model"]


def test_a_run_of_an_earlier_version_can_still_be_overwritten(finished, capsys):
    (finished / "run.json").unlink()  # runs written before run.json existed
    assert main(["train", "--out", str(finished), "--overwrite", "--seed", "1", *TINY_CLI]) == 0
    assert json.loads((finished / "run.json").read_text())["state"] == "finished"


# --------------------------------------------------------------------------------- fingerprint, evaluate

def test_a_run_records_its_fingerprint(finished):
    import hashlib

    record = json.loads((finished / "run.json").read_text())
    assert record["format"] == "vqflows-run" and record["state"] == "finished"
    for name in ("config.json", "model/config.json", "model/weights.pt"):
        assert record["sha256"][name] == hashlib.sha256((finished / name).read_bytes()).hexdigest(), name
    assert len(record["sha256"]["data"]) == 64


@pytest.mark.parametrize("edit", ["seed", "n"])
def test_evaluate_refuses_an_edited_config(finished, capsys, edit):
    config = json.loads((finished / "config.json").read_text())
    config[edit] += 1
    (finished / "config.json").write_text(json.dumps(config, indent=2))
    assert main(["evaluate", str(finished)]) == 2
    _one_line(capsys, "got config.json changed since training")
    # edited along with its record, the data it gives are still not the run's
    record = json.loads((finished / "run.json").read_text())
    record["sha256"]["config.json"] = __import__("hashlib").sha256((finished / "config.json").read_bytes()).hexdigest()
    (finished / "run.json").write_text(json.dumps(record))
    assert main(["evaluate", str(finished)]) == 2
    _one_line(capsys, "expected the points the run", f"{edit} {config[edit]}" if edit == "n" else f"seed {config[edit]}")


def test_evaluate_refuses_a_swapped_model(finished, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), "--model", "maf", *TINY_CLI]) == 0
    shutil.rmtree(finished / "model")
    shutil.copytree(other / "model", finished / "model")
    assert main(["evaluate", str(finished)]) == 2
    _one_line(capsys, "got model/config.json changed since training")
    assert main(["sample", str(finished), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 2
    _one_line(capsys, "changed since training")


def test_evaluate_marks_an_interrupted_run(tmp_path, capsys):
    out = tmp_path / "r"

    def stop(epoch, model, history):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train_run(RunConfig(**{**TINY, "epochs": 3}), out, callback=stop)
    assert json.loads((out / "run.json").read_text())["state"] == "interrupted"
    assert main(["evaluate", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["status"] == "interrupted" and got["interrupted"] is True and got["epochs"] == 2
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["status", "interrupted:", "the", "best", "weights", "so", "far", "after",
                                            "2", "epochs,", "not", "a", "finished", "run's"]
    train_run(RunConfig(**{**TINY, "epochs": 3}), out, resume=True)
    assert main(["evaluate", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["status"] == "finished" and got["interrupted"] is False and got["epochs"] == 3


# ------------------------------------------------------------------------------------------ umask, threads

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "r"
        train_run(RunConfig(**TINY), out)
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    assert len(paths) > 6
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


def test_absurd_thread_counts_are_refused_before_anything_is_made(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--threads", "100000", "--out", str(out), *TINY_CLI]) == 2
    _one_line(capsys, "threads: expected an integer from 0 to", "got 100000")
    assert not out.exists()
    s = datasets.load("helix", n=200)
    model = RunConfig(**TINY).build_model(3)
    with pytest.raises(ValueError, match="threads: expected an integer from 0 to"):
        fit(model, s.train, s.val, epochs=1, threads=100000)
    assert torch.get_num_threads() == 1


def test_scikit_learn_is_imported_before_the_folder_is_written(tmp_path):
    """Ctrl-C during a lazy import of scikit-learn (the chart stage's mixtures) breaks the module half-way
    and ends in a traceback; a run imports it before it writes anything, where an interrupt is clean."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import vqflows.runs as runs\n"
        "seen = []\n"
        "original = runs.write_run_json\n"
        "def spy(path, data):\n"
        "    seen.append('sklearn.mixture' in sys.modules)\n"
        "    return original(path, data)\n"
        "runs.write_run_json = spy\n"
        "runs.train_run(runs.RunConfig(dataset='helix', n=300, epochs=1, chart_epochs=1, transforms=1, hidden=8,"
        " charts=2), sys.argv[1])\n"
        "print(seen[0])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
