"""The classical baselines: sized on validation, exact scores, save/load, run folders and study rows."""

import numpy as np
import pytest
import torch

from vqflows import datasets
from vqflows.baselines import Classical, fit_baseline
from vqflows.runs import RunConfig, evaluate_run, load_run, train_run


@pytest.fixture(scope="module")
def helix():
    return datasets.load("helix", n=1_000, seed=0)


@pytest.mark.parametrize("kind, sizes", [("gmm", (2, 8, 16)), ("kde", (0.01, 0.05, 0.3))])
def test_size_is_chosen_on_validation(helix, kind, sizes, tmp_path):
    est = fit_baseline(kind, helix.train, helix.val, seed=0, candidates=sizes)
    scores = [row["val_log_likelihood"] for row in est.selection]
    assert [row["size"] for row in est.selection] == list(sizes)
    assert est.size == sizes[int(np.argmax(scores))]
    assert float(est.log_prob(helix.val).mean()) == pytest.approx(max(scores), abs=1e-9)
    again = Classical.load(est.save(tmp_path / kind))
    assert torch.equal(again.log_prob(helix.test), est.log_prob(helix.test))
    x = est.sample(300, seed=1)
    assert x.shape == (300, 3) and torch.equal(x, again.sample(300, seed=1))
    assert not torch.equal(x, est.sample(300, seed=2))


def test_gmm_samples_follow_its_density(helix):
    est = fit_baseline("gmm", helix.train, helix.val, candidates=(8,))
    x = est.sample(20_000, seed=0)
    # the mean log-density of its own draws is its negative entropy, the same as sklearn's draws give
    ref = torch.from_numpy(est.estimator.sample(20_000)[0])
    assert float(est.log_prob(x).mean()) == pytest.approx(float(est.log_prob(ref).mean()), abs=0.05)


def test_bad_input(helix):
    with pytest.raises(ValueError, match="model"):
        fit_baseline("gauss", helix.train, helix.val)
    with pytest.raises(ValueError, match="candidates"):
        fit_baseline("gmm", helix.train[:10], helix.val, candidates=(8,))
    with pytest.raises(ValueError, match="candidates"):
        fit_baseline("kde", helix.train, helix.val, candidates=(0.1, -1.0))


def test_baseline_run_folder(tmp_path):
    config = RunConfig(dataset="helix", model="gmm", n=600, seed=1)
    metrics = train_run(config, tmp_path / "run")
    assert metrics["size_selected"] in (8, 16, 32, 64, 128)
    assert metrics["gap_to_oracle"] == pytest.approx(metrics["oracle_log_likelihood"] - metrics["test_log_likelihood"])
    assert metrics["train_seconds"] > 0
    model, loaded = load_run(tmp_path / "run")
    assert isinstance(model, Classical) and loaded.model == "gmm"
    assert evaluate_run(tmp_path / "run")["test_log_likelihood"] == pytest.approx(metrics["test_log_likelihood"])
    with pytest.raises(ValueError, match="finished"):
        train_run(config, tmp_path / "run")


def test_baselines_are_rows_of_the_tables(tmp_path):
    from vqflows.experiments import cli

    assert cli.main(["--datasets", "helix", "--models", "gmm,kde", "--trials", "1", "--set", "n=600",
                     "--out", str(tmp_path), "--jobs", "1", "--quiet", "--no-figures"]) == 0
    text = (tmp_path / "summary.md").read_text()
    for row in ("| GMM |", "| KDE |", "Table 2", "Fit time"):
        assert row in text
