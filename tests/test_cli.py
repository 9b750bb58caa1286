"""The command line and run folders, end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vqflows import RunConfig, load_run
from vqflows.cli import main

TINY = ["--set", "n=400", "chart_epochs=2", "charts=4", "partition=vqae", "hidden=16", "transforms=2"]


def _train(tmp_path, capsys, *extra, model="vq-maf", dataset="helix"):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", dataset, "--model", model, "--seed", "0", "--epochs", "2", "--out", str(out),
               "--json", *TINY, *extra])
    assert rc == 0
    return out, json.loads(capsys.readouterr().out)


def test_train_json_and_run_folder(tmp_path, capsys):
    out, m = _train(tmp_path, capsys)
    for key in ("dataset", "model", "seed", "test_log_likelihood", "val_log_likelihood", "oracle_log_likelihood",
                "epochs", "train_seconds", "parameters"):
        assert key in m, key
    assert m["dataset"] == "helix" and m["model"] == "vq-maf" and m["epochs"] == 2
    for name in ("config.json", "metrics.json", "history.json", "history.csv", "model/config.json", "model/weights.pt"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["charts"] == 4 and config["n"] == 400
    assert json.loads((out / "metrics.json").read_text())["test_log_likelihood"] == pytest.approx(m["test_log_likelihood"])
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_log_likelihood"]) == 2

    # evaluate reproduces the stored numbers from the saved weights
    assert main(["evaluate", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_log_likelihood"] == pytest.approx(m["test_log_likelihood"], abs=1e-5)

    # sample writes an array of the requested shape
    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 3)

    # a finished run is not overwritten by accident
    assert main(["train", "--dataset", "helix", "--out", str(out), "--epochs", "1", *TINY]) == 2
    assert "finished run" in capsys.readouterr().err
    model, cfg = load_run(out)
    assert cfg.model == "vq-maf" and model.K == 4


def test_train_on_a_users_file(tmp_path, capsys):
    pts = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    _, m = _train(tmp_path, capsys, model="maf", dataset=str(tmp_path / "pts.npy"))
    assert m["oracle_log_likelihood"] is None and np.isfinite(m["test_log_likelihood"])


def test_datasets_json(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"helix", "spherical", "knotted", "interlocked-circles"} <= names
    assert all(np.isfinite(r["oracle"]) for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "nope"], "dataset: expected one of"),
    (["train", "--dataset", "/no/such/file.npy"], "/no/such/file.npy"),
    (["train", "--set", "colour=red"], "override: expected one of"),
    (["train", "--set", "charts=many"], "charts: expected a positive int or 'auto'"),
    (["evaluate", "/no/such/run"], "expected a run folder"),
])
def test_cli_errors_are_clear(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_overrides_are_typed():
    c = RunConfig().with_overrides(["lr=0.002", "charts=8", "partition=kmeans", "frames=false"])
    assert (c.lr, c.charts, c.partition, c.frames) == (0.002, 8, "kmeans", False)
    with pytest.raises(ValueError, match="model: expected one of"):
        RunConfig(model="glow")


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "vqflows", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_unavailable_device_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r"), "--epochs", "1", *TINY]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert main(["train", "--device", "tpu9", "--out", str(tmp_path / "r2"), "--epochs", "1", *TINY]) == 2
    assert "device: expected" in capsys.readouterr().err


def test_a_ctrl_c_python_would_drop_is_raised_again():
    """A Ctrl-C that lands in a callback Python cannot raise from (an import lock's weak-reference callback)
    is only reported as unraisable; during a run it is raised again in the main thread, and not printed."""
    import time
    import weakref

    from vqflows.cli import _interrupts_kept

    class Lock:
        pass

    def dropped():  # a KeyboardInterrupt inside a weak-reference callback is reported as unraisable
        ref = weakref.ref(Lock(), lambda _: (_ for _ in ()).throw(KeyboardInterrupt))
        return ref

    seen = []
    before, record = sys.unraisablehook, seen.append
    sys.unraisablehook = record
    try:
        dropped()  # outside a run: lost, as Python does
        assert len(seen) == 1 and seen[0].exc_type is KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt), _interrupts_kept():
            dropped()
            time.sleep(5)  # the interrupt arrives here
        assert sys.unraisablehook is record and len(seen) == 1  # restored; nothing reported
        with _interrupts_kept():  # other unraisable errors still reach the previous hook
            weakref.ref(Lock(), lambda _: 1 / 0)
        assert len(seen) == 2 and seen[1].exc_type is ZeroDivisionError
    finally:
        sys.unraisablehook = before


@pytest.mark.parametrize("code", [0, 2, 130])
def test_the_command_exits_with_main_s_code(monkeypatch, code):
    """``vqflows`` exits with ``main``'s code; an interrupted command (130) without the interpreter's
    finalisation, which would turn a Ctrl-C some library half-handled into death by SIGINT (-2)."""
    import vqflows.cli as cli

    monkeypatch.setattr(cli, "main", lambda: code)
    exits = []
    monkeypatch.setattr(cli.os, "_exit", lambda c: exits.append(c))
    if code == 130:
        cli.run()
        assert exits == [130]
    else:
        with pytest.raises(SystemExit) as e:
            cli.run()
        assert e.value.code == code and not exits
