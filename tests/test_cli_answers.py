"""The command line answers at once and in its own terms; progress shows only where a person waits."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vqflows
from vqflows import catalog, datasets, runs
from vqflows.cli import main
from vqflows.training import interactive

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--quiet", "--set", "n=200", "charts=2", "partition=vqae", "chart_epochs=1", "hidden=8",
        "transforms=1"]


def _run_cli(*args: str) -> tuple[int, str, bool]:
    """Run the command line in a fresh interpreter: exit code, stderr, and whether torch got imported."""
    code = ("import sys; from vqflows.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); raise SystemExit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    return done.returncode, done.stderr, done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("args, fragment", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--model", "nope"], "argument --model: invalid choice: 'nope'"),
    (["train", "--set", "charts=many"], "charts: expected a positive int or 'auto', got 'many'"),
    (["train", "--set", "lr=-1"], "lr: expected a finite number > 0"),
    (["train", "--set", "colour=red"], "override: expected one of"),
    (["train", "--epochs", "0"], "epochs: expected an integer >= 1, got 0"),
    (["train", "--dataset", "nowhere"], "--dataset: expected one of spherical, helix"),
    (["train", "--dataset", "missing.npy"], "--dataset: expected an existing .npy file, got 'missing.npy'"),
    (["train", "--resume", "--overwrite"], "--resume: expected either --resume or --overwrite, got both"),
    (["evaluate", "no-such-run"], "run: expected a run folder with config.json"),
    (["sample", "no-such-run"], "run: expected a run folder with config.json"),
    (["sample", "no-such-run", "--out", "x.png"], "--out: expected a file ending in .npy, .csv or .txt"),
    (["sample", "no-such-run", "-n", "0"], "-n: expected an integer >= 1, got 0"),
])
def test_usage_errors_are_answered_before_torch_is_imported(args, fragment):
    rc, err, torch_imported = _run_cli(*args)
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not torch_imported, f"{args}: torch was imported before the usage error"


def test_datasets_reads_the_stored_summaries_without_torch():
    rc, err, torch_imported = _run_cli("datasets", "--json")
    assert rc == 0 and not torch_imported, err


def test_stored_summaries_match_a_recomputed_row():
    """The stored catalog is what ``datasets.info`` computes (``python -m vqflows.catalog`` rewrites it)."""
    assert catalog.names() == datasets.names()
    stored = {row["name"]: row for row in catalog.summaries()}
    row = datasets.base.info(stored=False, n=10_000)  # computes every set: take one and compare in full
    fresh = {r["name"]: r for r in row}
    for name in ("helix", "spherical"):
        assert fresh[name].keys() == stored[name].keys()
        assert {k: v for k, v in fresh[name].items() if k != "oracle"} == {
            k: v for k, v in stored[name].items() if k != "oracle"}
        assert fresh[name]["oracle"] == pytest.approx(stored[name]["oracle"], abs=1e-6)
    assert datasets.info() == catalog.summaries()
    assert datasets.info(n=2_000)[1]["n"] == 2_000  # other arguments are computed


def test_out_folder_messages_name_the_options(tmp_path, capsys):
    out = tmp_path / "r"
    (out / "model").mkdir(parents=True)
    (out / "run.json").write_text('{"format": "vqflows-run", "state": "running"}')
    assert main(["train", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "add --resume to continue it or --overwrite to start over" in err and err.count("\n") == 1, err
    (out / "metrics.json").write_text("{}")
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert "add --overwrite to replace it" in capsys.readouterr().err


def test_too_many_charts_names_the_setting_and_how_to_lower_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--quiet", "--set", "n=40", "charts=32"]) == 2
    err = capsys.readouterr().err
    assert ("expected at least 32 training points, one per chart (charts=32 sets it), got 20; "
            "fewer charts fit, e.g. --set charts=16") in err, err
    assert not out.exists()
    with pytest.raises(runs.SettingError, match=r"e\.g\. charts=16$"):  # the API speaks of the setting itself
        runs.RunConfig(n=40, charts=32).check_size(20)
    model = vqflows.build(3, "maf", charts=32)
    with pytest.raises(ValueError, match=r"train: expected at least 32 points, one per chart .* charts=16\), got 20"):
        vqflows.fit(model, torch.randn(20, 3), epochs=1, chart_epochs=1)


def test_an_interrupt_prints_the_command_that_resumes(tmp_path, capsys, monkeypatch):
    fit = runs.fit

    def stop_after_one(*args, **kwargs):
        def stop(epoch, model, history):
            if epoch == 2:  # Ctrl-C in the second epoch: the first one's checkpoint is there
                raise KeyboardInterrupt
        return fit(*args, **{**kwargs, "callbacks": [stop]})

    monkeypatch.setattr(runs, "fit", stop_after_one)
    out = tmp_path / "my run"
    argv = ["train", "--out", str(out), *TINY]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "to continue from the last finished epoch: vqflows train" in err, err
    command = err.strip().split("epoch: ", 1)[1]
    assert command == shlex.join(["vqflows", *argv, "--resume"])
    monkeypatch.setattr(runs, "fit", fit)
    assert main(shlex.split(command)[1:]) == 0  # the printed command, as given, finishes the run
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_an_interrupted_overwrite_prints_the_command_that_starts_it_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *TINY]) == 0
    fit = runs.fit

    def interrupted(*args, **kwargs):
        def stop(epoch, model, history):
            raise KeyboardInterrupt
        return fit(*args, **{**kwargs, "callbacks": [stop]})

    monkeypatch.setattr(runs, "fit", interrupted)
    argv = ["train", "--out", str(out), "--overwrite", "--seed", "1", *TINY]
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing replaced" in err and "resume" not in err, err
    assert err.strip().endswith(f"to start the new run over: {shlex.join(['vqflows', *argv])}"), err
    assert json.loads((out / "config.json").read_text())["seed"] == 0  # the old run is as it was


def test_every_sample_format_reads_back_as_a_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    drawn = {}
    for suffix in (".npy", ".csv", ".txt"):
        path = tmp_path / f"samples{suffix}"
        assert main(["sample", str(run), "-n", "60", "--out", str(path)]) == 0
        drawn[suffix] = datasets.read_points(path)
        assert drawn[suffix].shape == (60, 3)
    assert torch.allclose(drawn[".csv"], drawn[".npy"]) and torch.allclose(drawn[".txt"], drawn[".npy"])
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["train", "--dataset", str(tmp_path / "samples.txt"), "--out", str(again), "--epochs", "1",
                 "--quiet", "--set", "charts=2", "chart_epochs=1", "hidden=8", "transforms=1"]) == 0
    assert json.loads((again / "data.json").read_text())["rows"] == 60


def test_sample_help_shows_the_default_file(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "(default: samples.npy)" in " ".join(capsys.readouterr().out.split())


def test_progress_shows_only_where_a_person_watches(capsys, monkeypatch):
    x = datasets.load("helix", n=200, seed=0)
    model = vqflows.build(3, "maf", charts=2, transforms=1, hidden_features=(8,), vq_hidden=(8,))
    vqflows.fit(model, x.train, x.val, epochs=1, chart_epochs=1)  # pytest's stderr is no terminal: quiet
    assert capsys.readouterr().err == ""
    vqflows.fit(model, x.train, x.val, epochs=1, chart_epochs=1, progress=True)
    assert "flow" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert interactive()
    vqflows.fit(model, x.train, x.val, epochs=1, chart_epochs=1)
    assert "charts" in sys.stderr.getvalue() and "flow" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    vqflows.fit(model, x.train, x.val, epochs=1, chart_epochs=1, progress=False)
    assert sys.stderr.getvalue() == ""


def test_the_estimator_has_a_verbose_switch(monkeypatch, capsys):
    from vqflows.sklearn import VQFlowDensity

    X = datasets.load("helix", n=200, seed=0).train.numpy()
    est = VQFlowDensity(charts=2, epochs=1, chart_epochs=1, transforms=1, hidden=8)
    assert est.get_params()["verbose"] is None
    est.set_params(verbose=True).fit(X)
    assert "flow" in capsys.readouterr().err
    est.set_params(verbose=False).fit(X)
    assert capsys.readouterr().err == ""
    assert np.isfinite(est.score(X))
