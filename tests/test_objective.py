"""Early-stopping checks built on the top-T bound, soft membership, and the chart count chosen on validation."""

from __future__ import annotations

import json

import pytest
import torch

from vqflows import EarlyStopping, VQFlow, build, datasets, fit
from vqflows.runs import RunConfig, train_run
from vqflows.selection import select_charts, validation_score
from vqflows.training import fit_partition


def _data(n=600, seed=0):
    s = datasets.load("helix", n=n, seed=seed)
    return s.train, s.val


def _small(charts=6, **kw):
    torch.manual_seed(0)
    return build(3, "maf", charts, transforms=2, hidden_features=(16, 16), vq_hidden=(16,), **kw)


def test_bound_check_over_every_chart_is_the_exact_check():
    train, val = _data()
    exact = fit(_small(), train, val, epochs=4, chart_epochs=2, objective="mixture", top=2,
                early_stopping=EarlyStopping(top=None))
    every = fit(_small(), train, val, epochs=4, chart_epochs=2, objective="mixture", top=2,
                early_stopping=EarlyStopping(top=6))  # top = K: no bound, the exact mixture
    assert every.val_log_likelihood == exact.val_log_likelihood and every.best_epoch == exact.best_epoch
    assert all(every.val_exact) and all(exact.val_exact)


def test_bound_check_is_a_lower_bound_of_the_exact_score():
    train, val = _data()
    scores = []

    def exact_score(epoch, model, history):
        v = val[torch.randperm(val.shape[0], generator=torch.Generator().manual_seed(0))[:100]]
        scores.append(float(model.log_prob(v).mean()))

    h = fit(_small(), train, val, epochs=4, chart_epochs=2, objective="mixture", top=2,
            early_stopping=EarlyStopping(10, 100, top=1), callbacks=[exact_score])
    assert not any(h.val_exact)
    assert all(b <= e + 1e-5 for b, e in zip(h.val_log_likelihood, scores))
    assert any(b < e - 1e-4 for b, e in zip(h.val_log_likelihood, scores))  # one chart does not hold all the mass


def test_early_stopping_arguments_are_checked():
    with pytest.raises(ValueError, match="patience: expected an integer >= 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="points: expected"):
        EarlyStopping(points=0)
    with pytest.raises(ValueError, match="top: expected"):
        EarlyStopping(top=0)


def test_responsibilities_are_soft_over_the_nearest_charts_and_hard_with_one():
    train, _ = _data()
    model = _small()
    fit_partition(model, train, epochs=2)
    r = model.responsibilities(train, 3)
    assert r.shape == (len(train), model.K)
    torch.testing.assert_close(r.sum(-1), torch.ones(len(train)))
    assert int((r > 0).sum(-1).max()) <= 3
    assert torch.equal(r.argmax(-1), model.assign(train))  # the nearest chart has the largest share
    hard = model.responsibilities(train, 1)
    assert torch.equal(hard, torch.nn.functional.one_hot(model.assign(train), model.K).float())
    assert float(r.max(-1).values.mean()) < 0.99  # genuinely shared


def test_soft_membership_fits_weights_and_frames_to_responsibilities():
    train, val = _data()
    hard, soft = _small(), _small()
    fit(hard, train, val, epochs=1, chart_epochs=2, objective="cells")
    fit(soft, train, val, epochs=1, chart_epochs=2, objective="cells", membership="soft", top=3)
    r = soft.responsibilities(train, 3)
    torch.testing.assert_close(soft.weights, r.double().mean(0).float(), atol=1e-5, rtol=0)
    assert not torch.allclose(hard.frames.shift, soft.frames.shift)  # frames see the neighbours' points
    with pytest.raises(ValueError, match="membership: expected one of 'hard', 'soft'"):
        fit(_small(), train, val, epochs=1, membership="fuzzy")


def test_select_charts_keeps_the_best_validation_likelihood():
    train, val = _data()

    def make(k):
        torch.manual_seed(0)
        return build(3, "maf", k, transforms=1, hidden_features=(8,), vq_hidden=(8,))

    model, history, table = select_charts(make, train, val, candidates=(1, 3, 6), epochs=2, chart_epochs=2)
    assert [row["charts"] for row in table] == [1, 3, 6]
    best = max(table, key=lambda row: row["val_log_likelihood"])
    assert model.K == best["charts"] and history.epochs == 2
    assert validation_score(model, val) == pytest.approx(best["val_log_likelihood"])
    with pytest.raises(ValueError, match="candidates: expected a non-empty"):
        select_charts(make, train, val, candidates=())


def test_run_with_charts_auto_records_the_choice_and_reloads(tmp_path):
    config = RunConfig(dataset="helix", model="vq-maf", n=600, epochs=2, chart_epochs=1, transforms=1, hidden=8,
                       charts="auto", partition="vqae", objective="mixture", top=2)
    metrics = train_run(config, tmp_path / "run")
    rows = metrics["chart_selection"]
    assert [row["charts"] for row in rows] == [8, 16, 32, 64]
    assert metrics["charts_selected"] == max(rows, key=lambda row: row["val_log_likelihood"])["charts"]
    model = VQFlow.load(tmp_path / "run")
    assert model.K == metrics["charts_selected"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["charts"] == "auto"
    assert RunConfig().with_overrides(["charts=auto"]).charts == "auto"
    with pytest.raises(ValueError, match="charts: expected a positive int or 'auto', got 'many'"):
        RunConfig().with_overrides(["charts=many"])


def test_the_exact_check_makes_one_pass_for_a_flow_without_a_penalty_and_subtracts_the_cef_penalty():
    from vqflows.training import objective
    _, val = _data()
    maf = _small()
    maf.eval()
    assert not maf.flow.penalised
    passes = []
    forward = type(maf.flow).forward

    def counted(self, *args):
        passes.append(args[0].shape[0])
        return forward(self, *args)

    type(maf.flow).forward = counted
    try:
        ll, score = objective.check_score(maf, maf.check_points(val), None)
    finally:
        type(maf.flow).forward = forward
    assert passes == [val.shape[0] * maf.K] and score == ll  # the all-charts pass alone; its penalty is zero
    assert ll == float(maf.log_prob(val).mean()) == validation_score(maf, val)  # the selection scores the same
    torch.manual_seed(0)
    cef = build(3, "cef", 6, transforms=1, hidden_features=(8,), vq_hidden=(8,))
    cef.eval()
    assert cef.flow.penalised and cef.flow.beta > 0
    x = cef.check_points(val)
    ll, score = objective.check_score(cef, x, None)
    with torch.no_grad():
        penalty = float(objective.nearest_penalty(cef, x).mean())
    assert penalty > 0 and score == pytest.approx(ll - penalty, abs=1e-6)
    assert validation_score(cef, val) == pytest.approx(score, abs=1e-6)
