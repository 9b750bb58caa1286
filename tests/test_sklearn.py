"""The scikit-learn estimator: clone, grid search by held-out log-likelihood, and sklearn's own checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils.estimator_checks import check_estimator

from vqflows import datasets
from vqflows.sklearn import VQFlowDensity

SMALL = {"epochs": 2, "chart_epochs": 1, "transforms": 1, "hidden": 8, "batch_size": 64}


@pytest.fixture(scope="module")
def X():
    return datasets.load("helix", n=400, seed=0).train.numpy()  # (200, 3)


def test_clone_keeps_parameters_and_drops_the_fit(X):
    est = VQFlowDensity(charts=2, flow_options={"passes": 2}, **SMALL).fit(X)
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "model_")
    assert copy.set_params(charts=4).charts == 4 and est.charts == 2
    # equal parameters give the same fit: the estimator is seeded
    np.testing.assert_array_equal(copy.set_params(charts=2).fit(X).score_samples(X[:20]), est.score_samples(X[:20]))


def test_score_is_the_mean_log_density_and_sample_is_seeded(X):
    est = VQFlowDensity(charts=2, **SMALL).fit(X)
    lp = est.score_samples(X)
    assert lp.shape == (len(X),) and lp.dtype == np.float64 and np.isfinite(lp).all()
    assert est.score(X) == pytest.approx(lp.mean())
    np.testing.assert_allclose(lp, est.model_.log_prob(X.astype(np.float32)).detach().numpy(), rtol=1e-5)
    a, b = est.sample(7, random_state=3), est.sample(7, random_state=3)
    assert a.shape == (7, 3) and np.array_equal(a, b) and not np.array_equal(a, est.sample(7, random_state=4))


def test_grid_search_picks_by_held_out_log_likelihood(X):
    cv = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(VQFlowDensity(charts=2, partition="vqae", **SMALL), {"charts": [2, 4]}, cv=cv).fit(X)
    means = search.cv_results_["mean_test_score"]
    assert np.isfinite(means).all() and means[0] != means[1]
    assert search.best_params_ == {"charts": [2, 4][int(np.argmax(means))]}
    # a split's score is the mean log-likelihood of the held-out fold under a model fitted on the rest
    train, test = next(cv.split(X))
    held_out = VQFlowDensity(charts=4, partition="vqae", **SMALL).fit(X[train]).score(X[test])
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(held_out, rel=1e-6)


def test_default_partition_is_the_command_lines(X):
    """partition="auto" (the default, as ``vqflows train``): MAF stacks flows started from Gaussian mixtures
    of charts/4 ... 2·charts components, two of each size, each waiting 5 epochs; "vqae" is the paper's."""
    from vqflows.ensemble import VQFlowEnsemble
    from vqflows.selection import partition_candidates

    assert VQFlowDensity().partition == "auto"
    est = VQFlowDensity(charts=4, **SMALL).fit(X)
    assert isinstance(est.model_, VQFlowEnsemble) and est.model_.config["partition"] == "gmm"
    assert est.model_.config["charts"] == [1, 2, 4, 8] * 2
    assert est.history_.epochs == 8 * SMALL["epochs"]
    assert partition_candidates("maf", "auto", 4) == [("gmm", k) for k in (1, 2, 4, 8)]
    assert partition_candidates("realnvp", "auto", 4) is None  # other flows: the VQ-AE, one model
    assert partition_candidates("maf", "vqae", "auto") == [("vqae", k) for k in (8, 16, 32, 64)]
    assert VQFlowDensity(charts=4, partition="vqae", **SMALL).fit(X).model_.config["partition"] == "vqae"
    assert VQFlowDensity(flow="realnvp", charts=4, **SMALL).fit(X).model_.config["partition"] == "vqae"


def test_sklearn_check_estimator():
    est = VQFlowDensity(charts=2, epochs=1, chart_epochs=1, transforms=1, hidden=8, batch_size=64)
    results = check_estimator(est, expected_failed_checks=VQFlowDensity.EXPECTED_FAILED_CHECKS, on_fail=None,
                              on_skip=None)
    failed = {r["check_name"]: str(r["exception"]).splitlines()[:1] for r in results if r["status"] == "failed"}
    assert not failed
    assert len(results) > 30


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_reach_training(X, monkeypatch, threads):
    import torch

    import vqflows.training.fitting

    seen, run_loop = [], vqflows.training.fitting.run_loop

    def watched(*args, **kwargs):  # the flow stage of fit
        seen.append(torch.get_num_threads())
        return run_loop(*args, **kwargs)

    monkeypatch.setattr(vqflows.training.fitting, "run_loop", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        VQFlowDensity(charts=2, threads=threads, **SMALL).fit(X)
        assert seen and set(seen) == {threads} and torch.get_num_threads() == 1  # every flow trained; put back after
    finally:
        torch.set_num_threads(before)


def test_absurd_threads_are_refused(X):
    import torch

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="threads: expected an integer from 0 to"):
        VQFlowDensity(charts=2, threads=100000, **SMALL).fit(X)
    assert torch.get_num_threads() == before


def test_patience_resolves_per_model(X, monkeypatch):
    """patience=None: the stacked default's members wait 5 epochs, a single model 10, a given value wins."""
    import vqflows.sklearn as module

    seen = []
    real_select, real_fit = module.select_charts, module.fit
    monkeypatch.setattr(module, "select_charts", lambda *a, **k: seen.append(k["config"]) or real_select(*a, **k))
    monkeypatch.setattr(module, "fit", lambda *a, **k: seen.append(k["config"]) or real_fit(*a, **k))
    VQFlowDensity(charts=2, **SMALL).fit(X)
    VQFlowDensity(charts=2, partition="vqae", **SMALL).fit(X)
    VQFlowDensity(charts=2, patience=7, **SMALL).fit(X)
    assert [c.early_stopping.patience for c in seen] == [5, 10, 7]


def test_top_resolves_from_the_data_for_the_stacked_default(X, monkeypatch):
    """top=None: the stacked default's members take stack_top's count (2 on a curve), a single model 4, a given value wins."""
    import vqflows.sklearn as module

    seen, asked = [], []
    real_select, real_fit = module.select_charts, module.fit
    monkeypatch.setattr(module, "stack_top", lambda train, charts, seed: asked.append((len(train), charts, seed)) or 3)
    monkeypatch.setattr(module, "select_charts", lambda *a, **k: seen.append(k["config"]) or real_select(*a, **k))
    monkeypatch.setattr(module, "fit", lambda *a, **k: seen.append(k["config"]) or real_fit(*a, **k))
    VQFlowDensity(charts=2, **SMALL).fit(X)
    VQFlowDensity(charts=2, partition="vqae", **SMALL).fit(X)
    VQFlowDensity(charts=2, top=1, **SMALL).fit(X)
    assert [c.top for c in seen] == [3, 4, 1] and asked == [(180, 2, 0)]


def test_repeats_draws_each_member_twice(X):
    est = VQFlowDensity(charts=2, **SMALL).fit(X)  # the default: every mixture size drawn twice
    assert est.model_.config["charts"] == [1, 2, 4] * 2
    assert VQFlowDensity(charts=2, repeats=1, **SMALL).fit(X).model_.config["charts"] == [1, 2, 4]
    assert est.score(X) == pytest.approx(float(np.mean(est.score_samples(X))))
    with pytest.raises(ValueError, match="repeats"):
        VQFlowDensity(repeats=0, **SMALL).fit(X)
    with pytest.raises(ValueError, match="repeats: expected 1 unless"):
        VQFlowDensity(repeats=2, partition="vqae", **SMALL).fit(X)
