"""Input that used to give a silently wrong result or a raw traceback through the Python API: each is now a
one-line ValueError naming what was expected (and the fix), or works."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vqflows
from vqflows import checks, datasets, flows
from vqflows.checks import SPHERE_TOLERANCE
from vqflows.runs import RunConfig
from vqflows.sklearn import VQFlowDensity

TINY = {"transforms": 1, "hidden_features": (8, 8)}
QUICK = {"epochs": 1, "chart_epochs": 1}


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(e.value)
    assert "\n" not in message and ": expected " in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture(scope="module")
def helix():
    return datasets.load("helix", n=600, seed=0)


@pytest.fixture(scope="module")
def fitted(helix):
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts=4, **TINY)
    vqflows.fit(model, helix.train, helix.val, **QUICK)
    return model


def _unit(n: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --------------------------------------------------------------------------------------------- spheres


@pytest.mark.parametrize("make", [
    lambda: vqflows.presets.create("vq-sphere", features=3),  # the default: 32 charts
    lambda: vqflows.presets.create("sphere", features=3),
    lambda: vqflows.build(3, "sphere", charts=4, **TINY),
], ids=["vq-sphere", "sphere", "build"])
def test_sphere_models_refuse_points_off_the_sphere(make, helix):
    model = make()
    with pytest.raises(ValueError) as e:
        model.log_prob(helix.test)
    _one_line(e, "x: expected points on the unit sphere", f"<= {SPHERE_TOLERANCE:g}", "x / |x|")
    with pytest.raises(ValueError) as e:
        vqflows.fit(model, helix.train, helix.val, **QUICK)
    _one_line(e, "train: expected points on the unit sphere", f"{len(helix.train)} of {len(helix.train)} row(s)")
    # within the stated tolerance a point counts as on the sphere; beyond it, not
    u = _unit(8)
    assert torch.isfinite(model.log_prob(u * (1 + SPHERE_TOLERANCE / 2))).all()
    with pytest.raises(ValueError, match="got 1 of 8 row"):
        model.log_prob(torch.cat([u[:7], u[7:] * (1 + 2 * SPHERE_TOLERANCE)]))


def test_sphere_models_still_fit_directions():
    model = vqflows.build(3, "sphere", charts=4, **TINY)
    history = vqflows.fit(model, _unit(400), _unit(100, seed=1), **QUICK)
    assert history.epochs == 1 and torch.isfinite(model.log_prob(_unit(50, seed=2))).all()


def test_sphere_estimator_refuses_points_off_the_sphere(helix):
    with pytest.raises(ValueError) as e:
        VQFlowDensity(flow="sphere", charts=4, epochs=1).fit(helix.train.numpy())
    _one_line(e, "X: expected points on the unit sphere")


# --------------------------------------------------------------------------------------- degenerate data


DEGENERATE = {
    "two-distinct-points": (lambda: np.repeat(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), 75, axis=0), 3, 32,
                            ["2 distinct point(s) in 150 rows", "more distinct points"]),
    "charts-equal-points": (lambda: datasets.get("helix").sample(32, seed=0).numpy(), 3, 32,
                            ["at least 128 distinct points for 32 charts", "use charts=8 or fewer"]),
    "more-columns-than-rows": (lambda: np.random.default_rng(0).normal(size=(200, 1000)), 1000, 4,
                               ["200 distinct point(s) in 200 rows of 1000 columns", "fewer columns"]),
    "constant-column": (lambda: np.c_[np.random.default_rng(0).normal(size=(300, 2)), np.ones(300)], 3, 4,
                        ["non-zero spread in every column", "constant column(s) [2]"]),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_data_is_refused_before_training(name):
    make, features, charts, fragments = DEGENERATE[name]
    model = vqflows.build(features, "maf", charts=charts)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        vqflows.fit(model, make(), **QUICK)
    _one_line(e, "train: expected", *fragments)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was trained
    # the estimator refuses the same data with the same check
    with pytest.raises(ValueError) as e:
        VQFlowDensity(charts=charts, epochs=1).fit(make())
    _one_line(e, "X: expected", *fragments)


def test_the_rule_admits_enough_distinct_points():
    x = datasets.get("helix").sample(4 * 8, seed=0)  # (d + 1) K points for K = 8 in R^3
    assert checks.training_points(x, charts=8, manifold_dim=3) is x
    with pytest.raises(ValueError, match="at least 36 distinct points for 9 charts"):
        checks.training_points(x, charts=9, manifold_dim=3)
    # an embedding flow needs d + 1 points per chart, and may have a constant coordinate
    flat = torch.cat([datasets.get("helix").sample(30, seed=1)[:, :2], torch.zeros(30, 1)], dim=1)
    assert checks.training_points(flat, charts=10, manifold_dim=2) is flat


# ------------------------------------------------------------------------------------- other arguments


@pytest.mark.parametrize("k, fragment", [
    (-1, "k: expected chart indices in [0, 4), got -1"),
    (torch.tensor([99, 0]), "k: expected chart indices in [0, 4), got 99"),
    (torch.tensor([0.0, 1.0]), "k: expected integer chart indices in [0, 4), got dtype torch.float32"),
    (torch.tensor([0, 1, 2]), "k: expected one chart index or shape (2,), got (3,)"),
], ids=["minus-one", "ninety-nine", "float", "wrong-length"])
def test_decode_refuses_chart_indices_outside_the_model(k, fragment, fitted):
    with pytest.raises(ValueError) as e:
        fitted.decode(torch.zeros(2, 3), k)
    _one_line(e, fragment)


def test_decode_takes_one_chart_for_all_rows(fitted):
    z = torch.randn(3, 3)
    assert torch.equal(fitted.decode(z, 3), fitted.decode(z, torch.tensor([3, 3, 3])))


def test_masked_arrays_with_masked_entries_are_refused(fitted, helix):
    x = np.ma.masked_array(helix.test[:5].numpy(), mask=np.zeros((5, 3), bool))
    assert torch.equal(fitted.log_prob(x), fitted.log_prob(helix.test[:5]))  # no masked entry: the values
    x[0, 1] = np.ma.masked
    for call in (lambda: fitted.log_prob(x), lambda: fitted.encode(x),
                 lambda: vqflows.fit(vqflows.build(3, "maf", charts=2, **TINY), np.ma.concatenate([x] * 20)),
                 lambda: VQFlowDensity(charts=2, epochs=1).fit(np.ma.concatenate([x] * 20))):
        with pytest.raises(ValueError) as e:
            call()
        _one_line(e, "expected an array without masked entries, got ", "masked value(s)")


def test_save_refuses_an_empty_path(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        fitted.save("")
    _one_line(e, "path: expected a folder to save into, got ''")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="got the file"):
        fitted.save("file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine"


def test_sizes_beyond_memory_are_refused_with_the_estimate(fitted, eight_gigabytes):
    with pytest.raises(ValueError) as e:
        fitted.sample(2_000_000_000)
    _one_line(e, "sample_shape: expected a size that fits in memory, got 2000000000", "about 88 GB", "8 GB available")
    with pytest.raises(ValueError) as e:
        datasets.load("helix", n=10**9)
    _one_line(e, "n: expected a size that fits in memory, got 1000000000", "about 240 GB")
    assert fitted.sample(1000, seed=0).shape == (1000, 3)  # what fits is drawn as before
    assert datasets.load("helix", n=1000).train.shape == (500, 3)


def test_the_memory_estimate_reads_this_machine():
    free = checks.available_memory()
    assert free is None or free > 0


def test_raw_tracebacks_are_now_one_line_errors(fitted, helix, tmp_path, monkeypatch):
    cases = [
        (lambda: fitted.log_prob(torch.empty(4, 3, device="meta")), "x: expected a tensor with values"),
        (lambda: fitted.distribution().log_prob(torch.zeros(5, 2)), "value: expected shape (..., 3), got (5, 2)"),
        (lambda: vqflows.fit(vqflows.build(3, "maf", charts=4, **TINY).half(), helix.train, **QUICK),
         "model: expected a float32 or float64 model to train, got float16"),
        (lambda: vqflows.fit(vqflows.build(3, "maf", charts=4, **TINY), helix.train, seed=-1, **QUICK),
         "seed: expected an integer in [0, 2**32), got -1"),
        (lambda: fitted.sample(3, seed=-1), "seed: expected an integer in [0, 2**32), got -1"),
        (lambda: VQFlowDensity(charts=4, threads=-1, epochs=1).fit(helix.train.numpy()),
         "threads: expected an integer >= 0, got -1"),
        (lambda: VQFlowDensity(charts=4, seed=-1, epochs=1).fit(helix.train.numpy()), "seed: expected an integer"),
        (lambda: RunConfig(seed=-1), "seed: expected an integer"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as e:
            call()
        _one_line(e, fragment)
    assert fitted.distribution().log_prob(torch.zeros(2, 5, 3)).shape == (2, 5)


def test_load_to_cuda_without_cuda_says_so(fitted, tmp_path, monkeypatch):
    fitted.save(tmp_path / "m")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as e:
        vqflows.VQFlow.load(tmp_path / "m", map_location="cuda")
    _one_line(e, "map_location: expected 'cpu' here (no CUDA device is available), got 'cuda'")
    assert vqflows.VQFlow.load(tmp_path / "m").K == 4


def test_training_data_that_requires_grad_trains(helix):
    train, val = helix.train.clone().requires_grad_(), helix.val.clone().requires_grad_()
    model = vqflows.build(3, "maf", charts=4, **TINY)
    assert vqflows.fit(model, train, val, **QUICK).epochs == 1
    assert train.grad is None and val.grad is None  # nothing reached the caller's tensors


# --------------------------------------------------------------------------------------------- flow options


def test_unknown_flow_options_are_refused():
    with pytest.raises(ValueError) as e:
        vqflows.build(3, "maf", charts=4, flow_options={"foo": 1})
    _one_line(e, "flow_options: expected options of flow 'maf' among randperm, passes, got 'foo'")
    with pytest.raises(ValueError) as e:
        vqflows.build(3, "sphere", charts=4, flow_options={"alpha": 1.0})
    _one_line(e, "flow 'sphere' among (none), got 'alpha'")
    with pytest.raises(ValueError, match="set transforms itself, not in flow_options"):
        vqflows.build(3, "maf", charts=4, flow_options={"transforms": 2})
    with pytest.raises(ValueError, match="flow_options: expected options of flow 'nsf' among transforms"):
        flows.chart_flow("nsf", 3, colour="red")


def test_known_flow_options_reach_the_flow():
    a = vqflows.build(3, "maf", charts=None, transforms=1, flow_options={"passes": 2})
    b = vqflows.build(3, "maf", charts=None, transforms=1)
    assert a.flow.flow.transform.transforms[0].passes == 2 != b.flow.flow.transform.transforms[0].passes
    assert vqflows.build(3, "cef", charts=None, flow_options={"beta": 0.5}).flow.beta == 0.5


# ----------------------------------------------------------------------------------------------- CSV files


def _csv(tmp_path, text: str, name: str = "points.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


POINTS = np.random.default_rng(0).normal(size=(20, 3)).round(6)
BODY = "\n".join(",".join(f"{v:.6f}" for v in row) for row in POINTS) + "\n"


@pytest.mark.parametrize("text", ["x,y,z\n" + BODY, '"x","y","z"\n' + BODY, BODY, "\ufeff" + BODY,
                                  "\ufeffx,y,z\n" + BODY, "# made by hand\n\nx,y,z\n" + BODY],
                         ids=["header", "quoted-header", "no-header", "bom", "bom-header", "comment-first"])
def test_csv_every_point_is_read(text, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        got = datasets.read_points(_csv(tmp_path, text))
    np.testing.assert_allclose(got.numpy(), POINTS, rtol=1e-6)


@pytest.mark.parametrize("text, fragment", [
    ("1.0,abc,3.0\n" + BODY, "line 1, column 2: expected a number, got 'abc'"),
    ("x,y,3\n" + BODY, "line 1, column 1: expected a number, got 'x'"),
    (BODY + "1,2,oops\n", "line 21, column 3: expected a number, got 'oops'"),
    (BODY + "1,2\n", "line 21: expected 3 comma-separated values, got 2"),
], ids=["text-in-first-row", "mixed-header", "text-in-a-later-row", "short-row"])
def test_csv_cells_that_are_not_numbers_are_named(text, fragment, tmp_path):
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError) as e:
        datasets.read_points(path)
    _one_line(e, str(path), fragment)


def test_csv_from_pandas_reads_the_points_only(tmp_path):
    pd = pytest.importorskip("pandas")
    cases = {"named.csv": {}, "unnamed.csv": {"columns": None}, "no-index.csv": {"columns": None, "index": False}}
    for name, how in cases.items():
        frame = pd.DataFrame(POINTS, columns=how.get("columns", ["a", "b", "c"]))
        frame.to_csv(tmp_path / name, index=how.get("index", True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = datasets.read_points(tmp_path / name)
        np.testing.assert_allclose(got.numpy(), POINTS, rtol=1e-6, err_msg=name)
        said = " ".join(str(w.message) for w in caught)
        assert ("row index" in said) == how.get("index", True) and ("column numbers" in said) == (name == "no-index.csv")
    # a first line of numbers other than 0, 1, ..., D-1 is a point
    assert datasets.read_points(_csv(tmp_path, "0,1,3\n" + BODY)).shape == (21, 3)
