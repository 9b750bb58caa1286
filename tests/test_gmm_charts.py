"""Gaussian-mixture charts: a VQ-Flow that starts as the fitted mixture and never ends below it on validation."""

import pytest
import torch

import vqflows
from vqflows import datasets
from vqflows.baselines import fit_baseline, fit_gmm
from vqflows.training import EarlyStopping, fit_chart_weights, fit_partition


@pytest.fixture(scope="module")
def helix():
    return datasets.load("helix", n=10_000, seed=0)


def _gmm(splits, components):
    """The fitted ``components``-component mixture that ``partition="auto"`` starts a member from."""
    return fit_baseline("gmm", splits.train, splits.val, seed=0, candidates=[components])


def _gmm_model(splits, charts, seed=0):
    torch.manual_seed(seed)
    model = vqflows.build(3, "maf", charts=charts, partition="gmm").double()
    fit_partition(model, splits.train, seed=seed)
    fit_chart_weights(model, splits.train)
    return model.eval()


def test_untrained_model_is_the_mixture(helix):
    """At the defaults (32 charts, MAF), before training: log_prob is GaussianMixture.score_samples."""
    model = _gmm_model(helix, 32)
    gmm = fit_gmm(helix.train, 32, seed=0)
    x = helix.test.double()
    want = torch.from_numpy(gmm.score_samples(x.numpy()))
    assert torch.allclose(model.log_prob(x), want, rtol=0, atol=1e-6)
    # the nearest charts are the most responsible components
    resp = torch.from_numpy(gmm.predict_proba(x.numpy()))
    assert torch.equal(model.assign(x), resp.argmax(-1))
    # and the chart weights are the mixture's
    assert torch.allclose(model.weights, torch.from_numpy(gmm.weights_), atol=1e-12)


def test_sampling_and_save_load(helix, tmp_path):
    model = _gmm_model(helix, 8)
    model.save(tmp_path / "m")
    again = vqflows.VQFlow.load(tmp_path / "m")
    x = helix.test[:200].double()
    assert torch.allclose(again.log_prob(x), model.log_prob(x), atol=1e-12)
    draws = model.sample(4000, seed=0)
    # draws of the mixture score like its test points (both near its negative entropy)
    assert abs(float(model.log_prob(draws).mean()) - float(model.log_prob(helix.test.double()).mean())) < 0.2


@pytest.mark.parametrize("initial", [True, False])
def test_early_stopping_counts_epoch_zero(initial):
    """A harmful step size: counting epoch 0 keeps the mixture; without it training ends below it."""
    s = datasets.load("helix", n=2_000, seed=0)
    model = _gmm_model(s, 8)
    before = float(model.log_prob(s.val.double()).mean())
    history = vqflows.fit(model, s.train, s.val, fit_charts=False, epochs=3, lr=0.05,
                          early_stopping=EarlyStopping(patience=3, points=None, initial=initial))
    after = float(model.log_prob(s.val.double()).mean())
    if initial:
        assert history.initial_val_score == pytest.approx(before, abs=1e-9)
        assert after >= before - 1e-9 and history.best_epoch == 0
    else:
        assert history.initial_val_score is None and history.best_epoch >= 1 and after < before


def test_fit_defaults_to_epoch_zero_check(helix):
    model = vqflows.build(3, "maf", charts=8, partition="gmm")
    rule = vqflows.training.default_early_stopping(model)
    assert rule.initial and rule.points == EarlyStopping().points and rule.top == EarlyStopping().top
    assert not vqflows.training.default_early_stopping(vqflows.build(3, "maf", charts=8)).initial


@pytest.mark.parametrize("worse", ["kept", "initial"])
def test_subset_check_compares_epoch_zero_on_every_point(helix, worse):
    """The check scores a subset; at the end the kept epoch and epoch 0 meet on every validation point,
    and the better stays (so a subset's choice never ends below the mixture on validation)."""
    from vqflows.training.loop import _end, check_initial, set_up
    from vqflows.training.objective import check_score

    model = _gmm_model(helix, 8)
    val = helix.val.double()
    config = vqflows.TrainConfig(early_stopping=EarlyStopping(patience=3, points=64, initial=True))
    state = set_up(model, helix.train.double(), val, config, vqflows.training.History())
    assert state.val.shape[0] == 64 and state.val_all.shape[0] == val.shape[0]
    check_initial(state)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # a flow far from the identity scores far below the mixture
        for p in model.flow.parameters():
            p.add_(torch.randn_like(p))
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    state.best, state.initial = (bad, good) if worse == "kept" else (good, bad)
    model.load_state_dict(bad)
    bad_score = check_score(model, val, None)[1]
    state.history.best_epoch = 2
    _end(state, [])
    assert check_score(model, val, None)[1] > bad_score
    assert state.history.best_epoch == (0 if worse == "kept" else 2)
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    # the end's exact scores are the kept model's own log-densities: the selection reuses them, not a second pass
    with torch.no_grad():
        assert torch.equal(state.history.val_log_prob, model.log_prob(val))
    assert "val_log_prob" not in state.history.to_dict()


def test_bound_check_on_every_point_still_compares_epoch_zero_exactly(helix):
    """Fewer validation points than the subset, but the check a bound over each point's nearest charts (the
    default rule at 32 charts): the end comparison runs on every point, exactly."""
    from vqflows.training.loop import set_up

    model = _gmm_model(helix, 32)
    rule = vqflows.training.default_early_stopping(model)
    val = helix.val[:300].double()
    state = set_up(model, helix.train.double(), val, vqflows.TrainConfig(early_stopping=rule), vqflows.training.History())
    assert rule.top < model.K and state.val.shape[0] == 300 and torch.equal(state.val_all, val)
    # all charts, or a subset that is exact: nothing to compare again
    exact = EarlyStopping(rule.patience, rule.points, None, initial=True)
    assert set_up(model, helix.train.double(), val, vqflows.TrainConfig(early_stopping=exact),
                  vqflows.training.History()).val_all is None


def test_gmm_charts_need_a_full_flow():
    with pytest.raises(ValueError, match="partition"):
        vqflows.build(3, "cef", charts=8, partition="gmm")


def test_selection_chooses_partition_and_charts_on_validation():
    from vqflows.selection import select_charts, validation_score

    s = datasets.load("helix", n=1_000, seed=0)

    def make(k, partition):
        torch.manual_seed(0)
        return vqflows.build(3, "maf", k, partition=partition, transforms=1, hidden_features=(8,), vq_hidden=(8,))

    model, _, table = select_charts(make, s.train, s.val, candidates=[("gmm", 4), ("vqae", 4), ("gmm", 8)],
                                    epochs=2, chart_epochs=2)
    assert [(r["partition"], r["charts"]) for r in table] == [("gmm", 4), ("vqae", 4), ("gmm", 8)]
    best = max(table, key=lambda r: r["val_log_likelihood"])
    assert validation_score(model, s.val) == pytest.approx(best["val_log_likelihood"])
    assert isinstance(model.partition, type(make(4, best["partition"]).partition))


def test_run_config_candidates():
    from vqflows.runs import RunConfig, auto_candidates

    assert auto_candidates(RunConfig(partition="vqae", charts=32)) is None
    assert RunConfig().partition == "auto"
    assert auto_candidates(RunConfig(model="vq-cef")) is None  # the VQ-AE, as in the paper
    assert auto_candidates(RunConfig(partition="gmm", charts="auto")) == [("gmm", k) for k in (8, 16, 32, 64)]
    # the default: members at a quarter, half, once and twice the chart count, each drawn twice
    twice = [("gmm", k, True, 1) for k in (8, 16, 32, 64)]
    assert auto_candidates(RunConfig()) == [("gmm", k) for k in (8, 16, 32, 64)] + twice
    assert auto_candidates(RunConfig(charts="auto")) == [("gmm", k) for k in (8, 16, 32, 64)] + twice
    assert auto_candidates(RunConfig(repeats=1)) == [("gmm", k) for k in (8, 16, 32, 64)]
    assert auto_candidates(RunConfig(charts=4, repeats=1)) == [("gmm", k) for k in (1, 2, 4, 8)]
    assert auto_candidates(RunConfig(charts=1, repeats=1)) == [("gmm", k) for k in (1, 2)]
    assert auto_candidates(RunConfig(model="maf", partition="auto")) is None
    # repeats: the same sizes again, each further draw marked with its index
    assert auto_candidates(RunConfig(charts=4, repeats=3)) == [("gmm", k) for k in (1, 2, 4, 8)] + \
        [("gmm", k, True, r) for r in (1, 2) for k in (1, 2, 4, 8)]
    with pytest.raises(ValueError, match="repeats"):
        RunConfig(repeats=0)
    with pytest.raises(ValueError, match="repeats: expected 1 unless partition='auto'"):
        RunConfig(repeats=2, partition="vqae")  # would be ignored: refused instead
    # None resolves per model: the stacked default's members draw twice and wait 5 epochs, the rest 1 and 10
    assert (RunConfig().members, RunConfig().training().early_stopping.patience) == (2, 5)
    for other in (RunConfig(partition="vqae"), RunConfig(partition="gmm"), RunConfig(model="vq-realnvp"),
                  RunConfig(model="maf")):
        assert (other.members, other.training().early_stopping.patience) == (1, 10)
    assert RunConfig(patience=7).training().early_stopping.patience == 7
    with pytest.raises(ValueError, match="partition"):
        RunConfig(partition="spectral")


def test_default_run_is_the_stacked_ensemble_and_reloads(tmp_path):
    from vqflows.ensemble import VQFlowEnsemble
    from vqflows.runs import RunConfig, evaluate_run, load_run, train_run

    config = RunConfig(dataset="helix", n=600, epochs=2, transforms=1, hidden=8)  # the default partition="auto"
    metrics = train_run(config, tmp_path / "run")
    table = metrics["chart_selection"]
    sizes = [("gmm", k) for k in (8, 16, 32, 64)]
    assert [(r["partition"], r["charts"]) for r in table] == sizes + sizes + [("ensemble", 240)]
    assert [r.get("repeat", 0) for r in table[:-1]] == [0] * 4 + [1] * 4
    assert (metrics["partition_selected"], metrics["charts_selected"]) == ("ensemble", [8, 16, 32, 64] * 2)
    assert sum(r["weight"] for r in table[:8]) == pytest.approx(1.0)
    assert metrics["val_log_likelihood"] == pytest.approx(table[-1]["val_log_likelihood"], abs=1e-5)
    # stacking weights maximise the validation likelihood: never below the best member there
    assert metrics["val_log_likelihood"] >= max(r["val_log_likelihood"] for r in table[:8]) - 1e-5
    # every member counted epoch 0, so each is at or above its own mixture, and the ensemble above them all
    s = datasets.load("helix", n=600, seed=0)
    for k in (8, 16, 32, 64):
        assert metrics["val_log_likelihood"] >= float(_gmm(s, k).log_prob(s.val).mean()) - 1e-4
    model, _ = load_run(tmp_path / "run")
    assert isinstance(model, VQFlowEnsemble) and model.K == 240 and len(model.members) == 8
    with torch.no_grad():  # each member's own test score, recorded beside the ensemble's
        alone = [float(m.log_prob(s.test).mean()) for m in model.members]
        # the recorded validation score is the stacking's, not recomputed: it is the saved ensemble's own
        assert float(model.log_prob(s.val).mean()) == pytest.approx(metrics["val_log_likelihood"], abs=1e-6)
        bound = float(model.log_prob_bound(s.test, top=4).mean())  # each member's own nearest charts
    assert metrics["member_test_log_likelihood"] == pytest.approx(alone, abs=1e-5)
    assert metrics["test_log_likelihood_top"] == pytest.approx(bound, abs=1e-5)
    assert metrics["member_gap_to_oracle"][0] == pytest.approx(metrics["oracle_log_likelihood"] - alone[0])
    assert evaluate_run(tmp_path / "run")["test_log_likelihood"] == pytest.approx(metrics["test_log_likelihood"], abs=1e-5)


def test_ctrl_c_in_a_default_run_keeps_the_best_so_far(tmp_path):
    from vqflows.runs import RunConfig, RunInterrupted, train_run

    def stop(epoch, model, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train_run(RunConfig(dataset="helix", n=600, epochs=3, transforms=1, hidden=8), tmp_path / "run", callback=stop)
    assert (tmp_path / "run" / "interrupted.json").exists() and not (tmp_path / "run" / "metrics.json").exists()
    assert vqflows.VQFlow.load(tmp_path / "run").K in (8, 16, 32, 64, 128)


def test_repeated_members_draw_their_own_charts_and_weights(tmp_path):
    from vqflows.runs import RunConfig, load_run, train_run

    metrics = train_run(RunConfig(dataset="helix", n=600, epochs=2, transforms=1, hidden=8, charts=4, repeats=2),
                        tmp_path / "run")
    table = metrics["chart_selection"]
    assert [(r["charts"], r.get("repeat", 0)) for r in table[:-1]] == [(k, r) for r in (0, 1) for k in (1, 2, 4, 8)]
    model, _ = load_run(tmp_path / "run")
    assert len(model.members) == 8 and model.K == 30
    a, b = model.members[2], model.members[6]  # 4 charts, drawn twice: other initial weights, other training
    assert any(not torch.equal(p, q) for p, q in zip(a.flow.parameters(), b.flow.parameters()))
