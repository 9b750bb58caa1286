"""Resuming at the defaults a user gets (32 charts, the mixture objective, the top-8 early-stopping check):
after Ctrl-C, SIGINT or SIGKILL the resumed run equals the uninterrupted one bit for bit; checkpoints hold
tensors and plain data only and belong to one fit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import vqflows.io
from vqflows import datasets, fit
from vqflows.cli import main
from vqflows.runs import RunConfig, RunInterrupted, train_run
from vqflows.training import checkpoint

#: 32 charts and the default objective and early stopping; only the flow and the chart stage are small
SETTINGS = ["n=2000", "chart_epochs=2", "hidden=16", "transforms=1"]
EPOCHS = 4
CLI = ["--epochs", str(EPOCHS), "--quiet", "--set", *SETTINGS]
#: the checkpoint of the default run's first member (8 charts); each member has its own
FIRST = "checkpoint-gmm-8.pt"
#: the history that must come out equal (timings and the resume point aside)
SAME = ("epoch", "train_loss", "val_log_likelihood", "val_score", "val_exact", "best_epoch", "best_val_score",
        "stopped_early", "interrupted", "chart_loss")


class Planted:
    """Unpickling this creates the file ``path``: code run by loading."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(autouse=True)
def every_epoch(monkeypatch):
    """Most tests here stop a run right after a given epoch's checkpoint is written: write one after every epoch."""
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)


def _model():
    torch.manual_seed(0)
    return RunConfig(hidden=16, transforms=1).build_model(3)


@pytest.fixture(scope="module")
def data():
    s = datasets.load("helix", n=2000, seed=0)
    return s.train, s.val


def _fit(model, data, checkpoint, **kw):
    train, val = data
    return fit(model, train, val, epochs=EPOCHS, chart_epochs=2, checkpoint=checkpoint, **kw)


def _same_models(a, b) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted fit, with its checkpoint."""
    ck = tmp_path_factory.mktemp("straight") / "ck.pt"
    model = _model()
    history = _fit(model, data, ck)
    assert model.K == 32 and history.epochs == EPOCHS and not history.interrupted
    assert history.val_exact == [False] * EPOCHS  # the top-8 bound was the check (8 < 32 charts)
    return model, history, ck


def test_fit_resumes_bit_for_bit_at_32_charts(straight, data, tmp_path):
    model, history, _ = straight
    ck = tmp_path / "ck.pt"

    def stop(epoch, m, h):
        if epoch == 3:
            raise KeyboardInterrupt

    cut = _fit(_model(), data, ck, callbacks=[stop])
    assert cut.interrupted and torch.load(ck, weights_only=True)["epoch"] == 2
    resumed = _model()  # a new process rebuilds the model, then resumes from the file
    again = _fit(resumed, data, ck)
    assert again.resumed_at == 2 and not again.interrupted
    for key in SAME:
        assert getattr(again, key) == getattr(history, key), key
    _same_models(model, resumed)
    x = data[1][:200]
    assert torch.equal(model.log_prob(x), resumed.log_prob(x))


def _written(monkeypatch) -> list[int]:
    """The epochs of the checkpoints written from now on."""
    epochs, save = [], vqflows.io.save_torch

    def noted(path, obj):
        epochs.append(obj["epoch"])
        return save(path, obj)

    monkeypatch.setattr(vqflows.io, "save_torch", noted)
    return epochs


def test_checkpoints_are_written_after_the_first_epoch_then_at_most_every_interval_and_at_the_end(
        straight, data, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 1e9)
    written = _written(monkeypatch)
    model = _model()
    history = _fit(model, data, tmp_path / "ck.pt")
    assert written == [1, EPOCHS] and history.epoch == straight[1].epoch
    _same_models(model, straight[0])
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)
    written.clear()
    _fit(_model(), data, tmp_path / "every.pt")
    assert written == list(range(1, EPOCHS + 1))


def test_ctrl_c_writes_the_last_finished_epoch_that_was_not_written(straight, data, tmp_path, monkeypatch):
    model, history, _ = straight
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 1e9)
    written = _written(monkeypatch)
    ck = tmp_path / "ck.pt"

    def stop(epoch, m, h):
        if epoch == 3:
            raise KeyboardInterrupt  # before epoch 3's checkpoint: epoch 2, held in memory, is the last finished

    cut = _fit(_model(), data, ck, callbacks=[stop])
    assert cut.interrupted and written == [1, 2] and torch.load(ck, weights_only=True)["epoch"] == 2
    resumed = _model()
    again = _fit(resumed, data, ck)
    assert again.resumed_at == 2 and written == [1, 2, 3, EPOCHS]  # each session writes its first epoch
    for key in SAME:
        assert getattr(again, key) == getattr(history, key), key
    _same_models(model, resumed)


@pytest.mark.parametrize("every", [0.0, 1e9])
def test_a_resumed_schedule_goes_on_at_its_saved_rate(data, tmp_path, monkeypatch, every):
    """Ctrl-C with a learning-rate schedule, epoch 2 written at once (``every=0``) or held in memory: the
    resumed fit equals the straight one (its optimizer gets the saved rate back, not the rate of the
    schedule's first step, which building the schedule sets)."""
    from vqflows.training import cosine
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", every)
    straight = _model()
    whole = _fit(straight, data, tmp_path / "a.pt", scheduler=cosine)

    def stop(epoch, m, h):
        if epoch == 3:
            raise KeyboardInterrupt

    written = _written(monkeypatch)
    assert _fit(_model(), data, tmp_path / "b.pt", scheduler=cosine, callbacks=[stop]).interrupted
    assert written == [1, 2]
    resumed = _model()
    again = _fit(resumed, data, tmp_path / "b.pt", scheduler=cosine)
    assert again.resumed_at == 2 and again.train_loss == whole.train_loss
    _same_models(straight, resumed)


def test_a_planted_pickle_is_refused_unread(data, tmp_path):
    ck, marker = tmp_path / "ck.pt", tmp_path / "ran"
    torch.save({"epoch": Planted(marker)}, ck)
    with pytest.raises(ValueError, match=r"^checkpoint: expected tensors and plain data .*refused unread") as e:
        _fit(_model(), data, ck)
    assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign"])
def test_a_damaged_checkpoint_is_a_one_line_error(straight, data, tmp_path, damage):
    ck = tmp_path / "ck.pt"
    good = straight[2].read_bytes()
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, ck)
    else:
        ck.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    before = ck.read_bytes()
    with pytest.raises(ValueError, match=r"^checkpoint: expected a checkpoint written by training, got") as e:
        _fit(_model(), data, ck)
    assert "\n" not in str(e.value) and ck.read_bytes() == before


def test_another_fits_checkpoint_is_refused(straight, data, tmp_path):
    model, history, _ = straight
    ck = tmp_path / "ck.pt"
    ck.write_bytes(straight[2].read_bytes())
    train, val = data
    other = datasets.load("helix", n=2000, seed=1)
    with pytest.raises(ValueError, match="written for other training points"):
        fit(_model(), other.train, val, epochs=EPOCHS, chart_epochs=2, checkpoint=ck)
    with pytest.raises(ValueError, match="written with epochs=4 where this fit has epochs=6"):
        fit(_model(), train, val, epochs=6, chart_epochs=2, checkpoint=ck)
    with pytest.raises(ValueError, match="written with lr=0.002 where this fit has lr=0.001"):
        _fit(_model(), data, ck, lr=1e-3)
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="written for another initial model"):
        _fit(RunConfig(hidden=16, transforms=1).build_model(3), data, ck)
    assert ck.read_bytes() == straight[2].read_bytes()
    # the same fit takes it: a finished checkpoint gives the finished model without training again
    same = _model()
    assert _fit(same, data, ck).epoch == history.epoch
    _same_models(model, same)


# ---------------------------------------------------------------------------------------- the command line

def run_killed(argv: list[str], epoch: int, sig: int = signal.SIGKILL) -> int:
    """Run the command line in a forked process that ``sig`` stops right after the checkpoint of
    ``epoch`` is written; returns its exit code (``-sig`` when the signal killed it)."""
    pid = os.fork()
    if pid == 0:  # the child: train, and never return into the test run
        code = 1
        try:
            save = vqflows.io.save_torch

            def hooked(path, obj):
                saved = save(path, obj)
                if Path(path).name in ("checkpoint.pt", FIRST) and obj["epoch"] == epoch:  # one model, or the first member
                    os.kill(os.getpid(), sig)
                return saved

            vqflows.io.save_torch = hooked
            code = main(argv)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "whole"
    assert main(["train", "--out", str(out), *CLI]) == 0
    history = json.loads((out / "history.json").read_text())
    # the default vq-maf run trains eight members from Gaussian-mixture charts (8, 16, 32 and 64, each drawn
    # twice): each one's early stopping counts epoch 0 and checks each epoch with the top-8 bound, which is
    # exact at 8 charts only
    selection = json.loads((out / "metrics.json").read_text())["chart_selection"]
    assert [row["charts"] for row in selection] == [8, 16, 32, 64] * 2 + [240]
    assert history["val_exact"] == ([True] * EPOCHS + [False] * (3 * EPOCHS)) * 2
    return out


def _same_runs(a: Path, b: Path) -> None:
    ha, hb = (json.loads((p / "history.json").read_text()) for p in (a, b))
    for key in SAME:
        assert ha[key] == hb[key], key
    files = sorted(f.relative_to(a) for f in a.glob("model/**/weights.pt"))
    assert files and files == sorted(f.relative_to(b) for f in b.glob("model/**/weights.pt"))
    for f in files:  # every member's weights
        wa, wb = (torch.load(p / f, weights_only=True) for p in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for key in ("test_log_likelihood", "val_log_likelihood", "epochs", "best_epoch"):
        assert ma[key] == mb[key], key
    assert not list(b.glob("checkpoint*.pt")) and not (b / ".lock").exists()


def test_cli_resume_after_sigint_equals_the_whole_run(whole, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cut"
    save = vqflows.io.save_torch

    def hooked(path, obj):
        saved = save(path, obj)
        if Path(path).name == FIRST and obj["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after epoch 2 is saved
        return saved

    monkeypatch.setattr(vqflows.io, "save_torch", hooked)
    assert main(["train", "--out", str(out), *CLI]) == 130
    err = capsys.readouterr().err
    assert "to continue from the last finished epoch: vqflows train" in err and err.strip().endswith("--resume"), err
    monkeypatch.undo()
    assert torch.load(out / FIRST, weights_only=True)["epoch"] == 2
    assert main(["train", "--out", str(out), "--resume", *CLI]) == 0
    assert json.loads((out / "history.json").read_text())["resumed_at"] == 2
    _same_runs(whole, out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_cli_resume_after_sigkill_equals_the_whole_run(whole, tmp_path):
    out = tmp_path / "cut"
    assert run_killed(["train", "--out", str(out), *CLI], epoch=2) == -signal.SIGKILL
    assert (out / ".lock").exists() and not (out / "metrics.json").exists()  # killed: nothing could clean up
    assert torch.load(out / FIRST, weights_only=True)["epoch"] == 2
    assert main(["train", "--out", str(out), "--resume", *CLI]) == 0  # the dead writer's lock is taken over
    _same_runs(whole, out)


def test_cli_refuses_a_planted_or_damaged_checkpoint(tmp_path, capsys):
    out, marker = tmp_path / "cut", tmp_path / "ran"

    def stop(epoch, model, history):
        if epoch == 2:
            raise KeyboardInterrupt

    config = RunConfig(n=2000, epochs=EPOCHS, chart_epochs=2, hidden=16, transforms=1)
    with pytest.raises(RunInterrupted):
        train_run(config, out, callback=stop)
    good = (out / FIRST).read_bytes()
    other = torch.load(out / FIRST, weights_only=True)
    other["fingerprint"]["settings"]["epochs"] = 5  # left by a fit of 5 epochs
    for content in ("planted", b"", good[:100], good[: len(good) // 2], "other"):
        if content == "planted":
            torch.save({"epoch": Planted(marker)}, out / FIRST)
        elif content == "other":
            torch.save(other, out / FIRST)
        else:
            (out / FIRST).write_bytes(content)
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        assert main(["train", "--out", str(out), "--resume", *CLI]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "vqflows train: error: checkpoint: expected" in err, err
        assert content != "other" or "written with epochs=5 where this fit has epochs=4" in err, err
        assert not marker.exists() and not (out / ".lock").exists()
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_cli_resume_of_a_stacked_run(tmp_path, monkeypatch, capsys):
    """The default vq-maf (partition=auto) trains flows from four mixtures, each drawn twice: each keeps its own
    checkpoint, so Ctrl-C in the first of the second draws resumes to the uninterrupted run, ensemble weights included."""
    two = [*CLI, "charts=16"]
    whole = tmp_path / "whole"
    assert main(["train", "--out", str(whole), *two]) == 0
    selection = json.loads((whole / "metrics.json").read_text())["chart_selection"]
    assert sum(row["trained"] for row in selection) == 8, selection
    out = tmp_path / "cut"
    save, seen = vqflows.io.save_torch, []

    def hooked(path, obj):
        saved = save(path, obj)
        if Path(path).name.startswith("checkpoint") and Path(path).name not in seen:
            seen.append(Path(path).name)
        if len(seen) == 5 and Path(path).name == seen[4] and obj["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the fifth candidate (a second draw), after its epoch 2
        return saved

    monkeypatch.setattr(vqflows.io, "save_torch", hooked)
    assert main(["train", "--out", str(out), *two]) == 130
    assert capsys.readouterr().err.strip().endswith("--resume")
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("checkpoint*.pt")) == sorted(seen) and seen[4] == "checkpoint-gmm-4-r1.pt"
    assert main(["train", "--out", str(out), "--resume", *two]) == 0
    _same_runs(whole, out)
    assert not list(out.glob("checkpoint*.pt"))
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (whole, out))
    assert [r["val_log_likelihood"] for r in a["chart_selection"]] == [r["val_log_likelihood"] for r in b["chart_selection"]]
    assert [r.get("weight") for r in a["chart_selection"]] == [r.get("weight") for r in b["chart_selection"]]
    assert json.loads((whole / "model" / "config.json").read_text()) == json.loads((out / "model" / "config.json").read_text())
