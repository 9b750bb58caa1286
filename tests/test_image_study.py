"""The image study: end to end through the command line, resuming, bits/dim, image frames."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from vqflows.experiments.images import main, run_image_study
from vqflows.images import (
    ClassifierFID,
    ImageFlowConfig,
    LogitDequantization,
    StudyConfig,
    build_image_flow,
    default_classifier_path,
    load_images,
    study,
)
from vqflows.images.report import summarise
from vqflows.images.study import TEST_NOISE_SEED, evaluate_image_model, run_path
from vqflows.training import fit_chart_weights, fit_partition

MODELS = ["realnvp", "vq-realnvp"]
#: a study small enough for a test: 2 epochs of tiny flows and a tiny VQ autoencoder
TINY = ["hidden=16,16", "transforms=2", "chart_epochs=2", "charts=4", "latent=2", "vq_channels=4", "vq_hidden=8"]


def _args(out, *extra):
    return ["--images", "digits", "--models", ",".join(MODELS), "--trials", "1", "--epochs", "2",
            "--eval-every", "1", "--out", str(out), "--quiet", "--set", *TINY, *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """``VQFLOWS_CACHE`` in a temporary folder holding a tiny FID classifier."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQFLOWS_CACHE", str(root))
        splits = load_images("digits")
        ClassifierFID.fit(splits, hidden=(32, 16), epochs=5, path=default_classifier_path("digits"))
        yield root


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "digits"
    assert main(_args(out)) == 0
    return out


def test_study_writes_curves_table_and_figures(finished):
    out = finished
    records = {m: json.loads(run_path(out, m, 0).read_text()) for m in MODELS}
    for m, r in records.items():
        assert r["finished"] and r["model"] == m
        assert r["curve"]["epoch"] == [0, 1, 2]
        assert r["curve"]["iteration"] == [0, 10, 20]  # ⌈1,257 / 128⌉ = 10 steps per epoch
        assert all(math.isfinite(v) and v >= 0 for v in r["curve"]["fid"])
        assert all(0 < v < math.log2(17) + 1 for v in r["curve"]["bits_per_dim"])
        samples = np.load(out / "runs" / r["samples"])
        assert samples.shape == (270, 64) and samples.max() <= 16
    assert records["vq-realnvp"]["flow_config"]["charts"] == 4 and records["realnvp"]["flow_config"]["charts"] is None
    for name in ("summary.md", "summary.csv", "summary.json", "fid_curves.png", "fid_curves.pdf",
                 "samples/realnvp.png", "samples/vq-realnvp.png", "samples/data.png", "study.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    # the table holds the runs' final values
    rows = {r["model"]: r for r in csv.DictReader((out / "summary.csv").open())}
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()
    for m, r in records.items():
        assert float(rows[m]["fid_mean"]) == pytest.approx(r["curve"]["fid"][-1], rel=1e-12)
        assert float(rows[m]["bits_per_dim_mean"]) == pytest.approx(r["curve"]["bits_per_dim"][-1], rel=1e-12)
        assert rows[m]["fid_std"] == ""  # one trial: no standard deviation
        row = next(x for x in summary["rows"] if x["model"] == m)
        assert row["fid"] == [r["final"]["fid"]] and row["runs"] == 1
        assert f"{r['final']['fid']:.2f}" in markdown and f"{r['final']['bits_per_dim']:.4f}" in markdown


def test_rerun_resumes_without_training(finished, monkeypatch):
    out = finished
    before = {m: run_path(out, m, 0).read_bytes() for m in MODELS}

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "train_image_run", forbidden)
    assert main(_args(out)) == 0
    assert {m: run_path(out, m, 0).read_bytes() for m in MODELS} == before


def test_only_missing_runs_are_trained(cache, finished, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    run_path(out, "vq-realnvp", 0).unlink()
    trained = []
    real = study.train_image_run

    def counting(model, trial, *args, **kwargs):
        trained.append((model, trial))
        return real(model, trial, *args, **kwargs)

    monkeypatch.setattr(study, "train_image_run", counting)
    assert main(_args(out)) == 0
    assert trained == [("vq-realnvp", 0)]
    assert json.loads(run_path(out, "vq-realnvp", 0).read_text())["finished"]


def test_other_settings_in_the_same_folder_are_refused(finished, capsys):
    assert main(_args(finished, "lr=0.0005")) == 2
    assert "same settings" in capsys.readouterr().err


def test_interrupt_keeps_finished_runs(cache, tmp_path, monkeypatch):
    real = study.train_image_run

    def interrupted_second(model, trial, *args, **kwargs):
        if model == "vq-realnvp":
            raise KeyboardInterrupt
        return real(model, trial, *args, **kwargs)

    monkeypatch.setattr(study, "train_image_run", interrupted_second)
    out = tmp_path / "digits"
    assert main(_args(out)) == 130
    assert json.loads(run_path(out, "realnvp", 0).read_text())["finished"]
    assert not run_path(out, "vq-realnvp", 0).exists()
    rows = {r["model"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["realnvp"]["runs"] == "1" and rows["vq-realnvp"]["runs"] == "0"


def test_bits_per_dim_matches_log_prob_by_hand(cache):
    """evaluate_image_model's bits/dim against a per-chart loop and the dequantisation formula."""
    torch.manual_seed(0)
    splits = load_images("digits")
    fid = ClassifierFID.load("digits")
    model = build_image_flow(ImageFlowConfig(flow="maf", charts=3, latent=2, transforms=2, hidden=(16,),
                                             vq_channels=(4,), vq_hidden=(8,)), splits.shape)
    deq = LogitDequantization(splits.levels)
    y_train = deq(splits.train, torch.Generator().manual_seed(1))[0]
    fit_partition(model, y_train, epochs=2)
    fit_chart_weights(model, y_train)
    with torch.no_grad():  # move the flow away from its initial near-identity
        for p in model.flow.parameters():
            p.add_(0.05 * torch.randn_like(p))

    levels = splits.test[:12]
    y, logdet = deq(levels, torch.Generator().manual_seed(TEST_NOISE_SEED))
    result = evaluate_image_model(model, splits, deq, fid, test_y=y, test_logdet=logdet,
                                  reference=fid.stats(splits.test), samples=20, seed=0, rows=8)

    # by hand: the same uniform draw, the logit Jacobian, and log Σ_k p_k p(y | k) chart by chart
    u = torch.rand(levels.shape, generator=torch.Generator().manual_seed(TEST_NOISE_SEED))
    x = (levels.float() + u) / 17
    s = 1e-6 + (1 - 2e-6) * x
    y_hand = torch.log(s) - torch.log1p(-s)
    logdet_hand = (math.log1p(-2e-6) - torch.log(s) - torch.log1p(-s)).sum(-1)
    torch.testing.assert_close(y_hand, y)
    with torch.no_grad():
        per_chart = []
        for k in range(model.K):
            kk = torch.full((len(y),), k)
            frame_y = (y - model.frames.shift[k]) @ model.frames.matrix[k].T
            per_chart.append(model.flow.log_prob(frame_y, model.contexts[kk]) + model.frames.logdet[k]
                             + model.log_weights[k])
        log_p = torch.logsumexp(torch.stack(per_chart, -1), -1)
    bpd = -(log_p.double() + logdet_hand.double() - 64 * math.log(17)) / (64 * math.log(2))
    assert result["bits_per_dim"] == pytest.approx(float(bpd.mean()), rel=1e-5)
    assert result["levels"].shape == (20, 64) and result["levels"].dtype == np.uint8


def test_summary_std_is_over_trials():
    runs = [{"final": {"fid": f, "bits_per_dim": b, "iteration": 10}, "parameters": 5, "chart_seconds": 1.0,
             "train_seconds": 2.0} for f, b in ((10.0, 2.0), (12.0, 2.5), (14.0, 3.0))]
    row = summarise({"maf": runs})[0]
    assert row["fid_mean"] == pytest.approx(12.0) and row["fid_std"] == pytest.approx(2.0)
    assert row["bits_per_dim_std"] == pytest.approx(0.5)
    runs[1]["final"]["fid"] = None  # a run whose score was not finite
    assert summarise({"maf": runs})[0]["fid_mean"] is None


def test_config_validation():
    config = StudyConfig()
    assert config.with_overrides(["hidden=32,32", "lr=0.01", "frames=true"]).hidden == (32, 32)
    with pytest.raises(ValueError, match="expected one of"):
        config.with_overrides(["width=3"])
    with pytest.raises(ValueError, match="lr: expected"):
        config.with_overrides({"lr": "fast"})
    with pytest.raises(ValueError, match="schedule"):
        StudyConfig(schedule="linear")
    with pytest.raises(ValueError, match="models"):
        run_image_study("digits", models=["glow"])
    base, vq = config.flow_config("maf"), config.flow_config("vq-maf")
    assert base.charts is None and vq.charts == config.charts
    assert {k: v for k, v in base.to_dict().items() if k != "charts"} == \
           {k: v for k, v in vq.to_dict().items() if k != "charts"}


@pytest.mark.slow
def test_parallel_jobs_match_serial_runs(cache, finished, tmp_path):
    """Two worker processes give the same curves as the in-process runs (seeded, one thread each)."""
    out = tmp_path / "parallel"
    assert main(_args(out, "--jobs", "2")) == 0
    for m in MODELS:
        serial = json.loads(run_path(finished, m, 0).read_text())
        parallel = json.loads(run_path(out, m, 0).read_text())
        assert parallel["finished"]
        np.testing.assert_allclose(parallel["curve"]["bits_per_dim"], serial["curve"]["bits_per_dim"], rtol=1e-6)
        np.testing.assert_allclose(parallel["curve"]["fid"], serial["curve"]["fid"], rtol=1e-6)
