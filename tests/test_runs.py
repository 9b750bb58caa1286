"""Run folders keep what users made: one writer at a time, no silent overwrite, Ctrl-C, resume, file data."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vqflows import datasets
from vqflows.cli import main
from vqflows.runs import RunConfig, RunInterrupted, load_data, load_run, train_run

TINY = {"dataset": "helix", "n": 200, "epochs": 2, "charts": 2, "partition": "vqae", "chart_epochs": 1, "hidden": 8,
        "transforms": 1}
TINY_CLI = ["--epochs", "1", "--quiet", "--set", "n=200", "charts=2", "partition=vqae", "chart_epochs=1", "hidden=8", "transforms=1"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stop_at(epoch: int):
    def callback(e, model, history):
        if e == epoch:
            raise KeyboardInterrupt
    return callback


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: no process has this pid until the system reuses it
    return p.pid


def test_repeated_set_accumulate(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--out", str(out), "--epochs", "1", "--quiet", "--set", "n=200", "charts=2",
            "--set", "chart_epochs=1", "--set", "hidden=8", "transforms=1"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["n"], config["charts"], config["chart_epochs"], config["hidden"], config["transforms"]) == (
        200, 2, 1, 8, 1)


def test_threads_must_be_non_negative(tmp_path, capsys):
    assert main(["train", "--threads", "-2", "--out", str(tmp_path / "r"), *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads: expected an integer >= 0, got -2" in err
    assert not (tmp_path / "r").exists()


def test_a_locked_folder_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        (out / ".lock").write_text(json.dumps(lock))
        assert main(["train", "--out", str(out), *TINY_CLI]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"locked by pid {holder.pid}" in err
        assert json.loads((out / ".lock").read_text()) == lock  # the live writer keeps its lock
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    assert main(["train", "--out", str(out), *TINY_CLI]) == 0
    assert (out / "metrics.json").exists() and not (out / ".lock").exists()


def test_two_writers_at_once_one_wins(tmp_path):
    """Two processes training into one folder: exactly one succeeds, the other exits 2 with one line."""
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "vqflows", "train", "--out", str(out), "--json", *TINY_CLI]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert loser.count("\n") == 1 and ("locked by pid" in loser or "finished run" in loser), loser
    winner = json.loads(next(o for rc, o, _ in results if rc == 0))
    assert json.loads((out / "metrics.json").read_text())["test_log_likelihood"] == pytest.approx(
        winner["test_log_likelihood"])
    assert not (out / ".lock").exists()


def test_ctrl_c_keeps_the_best_weights_and_a_rerun_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    with pytest.raises(RunInterrupted, match=r"kept the best weights \(epoch 1; 1 epoch finished\)"):
        train_run(RunConfig(**TINY), out, callback=_stop_at(1))
    assert (out / "interrupted.json").exists() and (out / "model" / "weights.pt").exists()
    assert not (out / "metrics.json").exists() and not (out / ".lock").exists()
    before = _snapshot(out)

    # a plain rerun is refused: the interrupted run is not overwritten
    assert main(["train", "--out", str(out), *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unfinished run" in err and "resume" in err
    assert _snapshot(out) == before

    # resume with other settings is refused too
    assert main(["train", "--out", str(out), "--resume", *TINY_CLI, "--set", "charts=3"]) == 2
    assert "resume: expected the settings" in capsys.readouterr().err
    assert _snapshot(out) == before

    # --overwrite replaces it, and the stale interrupted.json goes
    assert main(["train", "--out", str(out), "--overwrite", *TINY_CLI]) == 0
    assert (out / "metrics.json").exists() and not (out / "interrupted.json").exists()


def test_resume_finishes_an_interrupted_run(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(RunInterrupted):
        train_run(RunConfig(**TINY), out, callback=_stop_at(1))
    metrics = train_run(RunConfig(**TINY), out, resume=True)
    assert metrics["epochs"] == 2 and not metrics["interrupted"]
    assert not (out / "interrupted.json").exists() and not (out / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="finished run"):
        train_run(RunConfig(**TINY), out, resume=True)


def test_ctrl_c_in_the_chart_stage_claims_no_weights(tmp_path, capsys, monkeypatch):
    import vqflows.training.fitting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vqflows.training.fitting, "fit_partition", interrupted)
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *TINY_CLI]) == 130
    err = capsys.readouterr().err
    assert "kept no weights" in err and "best weights" not in err, err
    assert not (out / "model").exists() and (out / "config.json").exists() and not (out / ".lock").exists()


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    config = RunConfig(**{**TINY, "epochs": 3, "patience": 5})
    whole = train_run(config, tmp_path / "whole")
    with pytest.raises(RunInterrupted, match="resume continues"):
        train_run(config, tmp_path / "cut", callback=_stop_at(2))
    ran = []
    resumed = train_run(config, tmp_path / "cut", resume=True, callback=lambda e, m, h: ran.append(e))
    assert ran and ran[0] > 1 and ran[-1] == 3  # it went on, not over
    a, _ = load_run(tmp_path / "whole")
    b, _ = load_run(tmp_path / "cut")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert resumed["test_log_likelihood"] == whole["test_log_likelihood"]
    for key in ("train_loss", "val_log_likelihood"):
        assert json.loads((tmp_path / "cut" / "history.json").read_text())[key] == json.loads(
            (tmp_path / "whole" / "history.json").read_text())[key]


def test_a_failed_fresh_run_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *TINY_CLI, "--set", "lr=1e8", "batch_size=10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite training loss" in err and "learning rate" in err
    assert not out.exists()


def test_a_file_dataset_uses_every_row(tmp_path):
    path = tmp_path / "pts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(20_000, 2)).astype(np.float32))
    splits = load_data(RunConfig(dataset=str(path)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10_000, 5_000, 5_000)
    small = tmp_path / "small.csv"
    np.savetxt(small, np.random.default_rng(1).normal(size=(40, 2)), delimiter=",")
    splits = load_data(RunConfig(dataset=str(small)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)
    assert splits.sha256 == hashlib.sha256(small.read_bytes()).hexdigest() and splits.path == str(small.resolve())
    # an explicit n still draws a subset
    assert len(datasets.load(small, n=20).train) == 10


def test_evaluate_from_elsewhere_and_refuse_a_changed_file(tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    np.save(work / "pts.npy", np.random.default_rng(0).normal(size=(120, 2)).astype(np.float32))
    monkeypatch.chdir(work)
    assert main(["train", "--dataset", "pts.npy", "--model", "maf", "--out", "run", "--json",
                 "--epochs", "1", "--set", "hidden=8", "transforms=1"]) == 0
    trained = json.loads(capsys.readouterr().out)
    data = json.loads((work / "run" / "data.json").read_text())
    assert data["path"] == str(work / "pts.npy") and data["rows"] == 120
    assert data["sha256"] == trained["dataset_sha256"] == hashlib.sha256((work / "pts.npy").read_bytes()).hexdigest()

    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(work / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_log_likelihood"] == pytest.approx(trained["test_log_likelihood"], abs=1e-5)

    np.save(work / "pts.npy", np.random.default_rng(1).normal(size=(120, 2)).astype(np.float32))
    assert main(["evaluate", str(work / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed file" in err and "pts.npy" in err


def test_a_default_run_trains_its_members_on_two_charts_per_point_on_a_curve(monkeypatch):
    """The default vq-maf run on a curve: every member's objective over 2 charts (stack_top on the training
    split at the run's 32 charts); a given top and other models keep theirs."""
    import vqflows.runs as runs
    from vqflows import datasets
    from vqflows.config import RunConfig

    seen = []

    class Stop(Exception):
        pass

    def spy(make, train, val, *, config, **kwargs):
        seen.append(config.top)
        raise Stop

    monkeypatch.setattr(runs, "select_charts", spy)
    splits = datasets.load("knotted", n=10_000, seed=0)
    for config in (RunConfig(dataset="knotted"), RunConfig(dataset="knotted", top=3),
                   RunConfig(dataset="knotted", charts="auto", partition="gmm")):
        with pytest.raises(Stop):
            runs._fit(config, None, splits)
    assert seen == [2, 3, 4]
