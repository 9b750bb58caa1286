from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from vqflows.datasets.earth import latlon_to_xyz, load_earth, xyz_to_latlon
from vqflows.experiments import earth, earth_cli, earth_report
from vqflows.flows.sphere import sphere_quadrature
from vqflows.vmf import VMFMixture, fit_vmf_mixture, vmf_sample

#: Small enough for seconds on one core, big enough to exercise charts, stages and early stopping.
TINY = {"points_per_chart": 40, "transforms": 2, "hidden": 16, "depth": 1, "epochs": 3, "patience": 2,
        "lrs": (3e-3, 1e-3), "batch_size": 64, "components": (2, 4), "kernel_epochs": 2}


def clustered_events(n: int, seed: int) -> np.ndarray:
    """Latitude, longitude rows drawn from three vMF caps, one of them straddling the date line."""
    rng = np.random.default_rng(seed)
    means = latlon_to_xyz(np.array([35.0, -10.0, 60.0]), np.array([140.0, -75.0, 179.0]))
    parts = [vmf_sample(torch.from_numpy(mu), kappa, n // 3, rng=rng) for mu, kappa in zip(means, (80.0, 200.0, 40.0))]
    lat, lon = xyz_to_latlon(torch.cat(parts).numpy())
    return np.stack([lat, lon], axis=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("earth")
    rows = clustered_events(300, seed=0)
    text = "# synthetic events for tests\nlatitude,longitude\n" + "".join(f"{a:.5f},{b:.5f}\n" for a, b in rows)
    (folder / "volerup.csv").write_text(text)
    return folder


# ------------------------------------------------------------------------------- normalisation on S²


def test_fitted_vq_sphere_integrates_to_one(data_dir):
    splits = load_earth("volcano", data_dir=data_dir, seed=0)
    config = earth.EarthConfig(**{**TINY, "epochs": 20, "patience": 5, "lrs": (1e-2,), "init": "kmeans"})
    torch.manual_seed(0)
    model = earth.build_model("vq-sphere", len(splits.train), config)
    earth.train_in_stages(model, splits, config, seed=0)
    assert model.K == config.charts(len(splits.train)) == 6
    model = model.double()
    with torch.no_grad():
        # a real fit, far sharper than uniform on held-out points (the caps have κ = 40 to 200; the median,
        # because one of 30 test points can sit outside every training cap) ...
        assert -float(model.log_prob(splits.test.double()).median()) < math.log(4 * math.pi) - 2.5
        # ... whose mixture of six stereographic charts still holds exactly unit mass
        total = sphere_quadrature(model.log_prob, 200, 400)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_fitted_vmf_mixture_integrates_to_one(data_dir):
    splits = load_earth("volcano", data_dir=data_dir, seed=1)
    selection = fit_vmf_mixture(splits.train, splits.val, components=(2, 3, 6), seed=0)
    assert selection.model.kappas.max() > 30  # sharp enough for the quadrature to mean something
    total = sphere_quadrature(selection.model.log_prob, 200, 400)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_uniform_floor_keeps_unit_mass_and_is_chosen_on_validation():
    mixture = VMFMixture([0.7, 0.3], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [300.0, 50.0])
    def floored(x):
        return earth.with_floor(mixture.log_prob(x), 0.01)
    assert sphere_quadrature(floored, 200, 400) == pytest.approx(1.0, abs=1e-6)
    x = mixture.sample(2000, seed=0)
    lp = mixture.log_prob(x)
    assert torch.equal(earth.with_floor(lp, 0.0), lp)
    assert torch.all(earth.with_floor(lp, 0.03) >= math.log(0.03 / (4 * math.pi)))
    assert earth.choose_floor(lp) == 0.0  # the true density gains nothing from a floor
    far = torch.cat([lp, mixture.log_prob(torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))])
    w = earth.choose_floor(far)
    assert w > 0 and all(earth.with_floor(far, w).mean() >= earth.with_floor(far, v).mean() for v in earth.FLOOR_WEIGHTS)
    with pytest.raises(ValueError, match="weight: expected 0 <= w < 1, got 1.0"):
        earth.with_floor(lp, 1.0)


# ---------------------------------------------------------------------------------------- config


def test_config_charts_and_overrides():
    config = earth.EarthConfig(points_per_chart=50, min_charts=4, max_charts=100)
    assert [config.charts(n) for n in (10, 660, 4896, 100_000)] == [4, 13, 98, 100]
    changed = config.with_overrides(["points_per_chart=32", "lrs=[0.01, 0.001]", "eps=1", "partition=vqae"])
    assert (changed.points_per_chart, changed.lrs, changed.eps, changed.partition) == (32, (0.01, 0.001), 1.0, "vqae")
    assert config.with_overrides({"lrs": 0.002}).lrs == (0.002,)
    with pytest.raises(ValueError, match="override: expected one of .*got 'chartz'"):
        config.with_overrides(["chartz=3"])
    with pytest.raises(ValueError, match="points_per_chart: expected int, got 3.5"):
        config.with_overrides(["points_per_chart=3.5"])
    with pytest.raises(ValueError, match="partition: expected one of 'kmeans', 'vqae', got 'grid'"):
        config.with_overrides(["partition=grid"])
    with pytest.raises(ValueError, match="lrs: expected one or more learning rates > 0"):
        earth.EarthConfig(lrs=(1e-3, -1.0))
    with pytest.raises(ValueError, match="m: expected at most min_charts=2, got 3"):
        earth.EarthConfig(m=3)


def test_resolve_configs_per_row_overrides():
    configs = earth.resolve_configs(["vq-sphere", "cef"], ["hidden=32", "cef.transforms=3", "vmf.components=[7]"], epochs=9)
    assert configs["vq-sphere"].hidden == configs["cef"].hidden == 32
    assert configs["cef"].transforms == 3 and configs["vq-sphere"].transforms == earth.EarthConfig().transforms
    assert configs["vq-sphere"].epochs == configs["cef"].epochs == 9
    kernel = {f.name for f in dataclasses.fields(earth.EarthConfig) if f.name.startswith("kernel_")}
    # the run's recorded config holds the fields its model uses: those of its start
    assert set(configs["vq-sphere"].to_dict("vq-sphere")) == {"init"} | kernel
    kmeans = dataclasses.replace(configs["vq-sphere"], init="kmeans")
    assert set(kmeans.to_dict("vq-sphere")) == {f.name for f in dataclasses.fields(earth.EarthConfig)} - {"components", "init"} - kernel
    assert set(configs["cef"].to_dict("cef")) == set(kmeans.to_dict("vq-sphere"))
    assert earth.EarthConfig().to_dict("vmf") == {"components": list(earth.EarthConfig().components)}
    with pytest.raises(ValueError, match="override: expected one of .*got 'moon'"):
        earth.resolve_configs(["vq-sphere"], ["moon.hidden=3"])


def test_build_model_rows():
    config = earth.EarthConfig(points_per_chart=100)
    vq = earth.build_model("vq-sphere", 1000, config)
    plain = earth.build_model("sphere", 1000, config)
    cef = earth.build_model("vq-cef", 1000, config)
    assert (vq.K, plain.K, cef.K) == (10, 1, 10)
    assert vq.config["flow"] == plain.config["flow"] == "sphere" and cef.config["flow"] == "cef"
    with pytest.raises(ValueError, match="model: expected one of 'sphere', 'vq-sphere', 'cef', 'vq-cef', got 'vmf'"):
        earth.build_model("vmf", 1000, config)


def test_main_rejects_bad_arguments(data_dir, tmp_path, capsys):
    assert earth_cli.main(["--datasets", "volcano,moon", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 2
    assert "datasets: expected one of 'volcano', 'earthquake', 'flood', 'fire', got 'moon'" in capsys.readouterr().err
    assert earth_cli.main(["--models", "vq-maf", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 2
    assert "models: expected one of" in capsys.readouterr().err
    assert earth_cli.main(["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "data-dir: expected the folder" in capsys.readouterr().err
    assert earth_cli.main(["--seeds", "0", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 2
    assert "seeds: expected an integer >= 1, got 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- end to end


def test_benchmark_end_to_end_table_matches_runs(data_dir, tmp_path):
    out = tmp_path / "out"
    overrides = [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in TINY.items() if k != "epochs"]
    argv = ["--earth", "--datasets", "volcano", "--seeds", "2", "--models", "vmf,vmf-kde,vq-sphere,cef",
            "--data-dir", str(data_dir), "--out", str(out), "--jobs", "1", "--epochs", "2", "--quiet",
            "--set", *overrides]
    assert earth_cli.main(argv) == 0

    runs = {}
    for path in sorted((out / "runs").glob("volcano/*/seed-*/result.json")):
        r = json.loads(path.read_text())
        runs[r["model"], r["seed"]] = r
    assert set(runs) == {(m, s) for m in ("vmf", "vmf-kde", "vq-sphere", "cef") for s in (0, 1)}
    assert runs["cef", 0]["config"]["epochs"] == 2 and runs["cef", 0]["config"]["transforms"] == 2
    assert runs["vq-sphere", 0]["config"]["init"] == "kernels" and runs["vq-sphere", 0]["config"]["kernel_epochs"] == 2
    assert runs["vmf", 0]["config"] == {"components": [2, 4]}
    assert "reconstruction" in runs["cef", 0] and "reconstruction" not in runs["vq-sphere", 0]
    # the default vq-sphere starts at a kernel density: one chart per training point, never below it on validation
    assert runs["vq-sphere", 0]["charts"] == runs["vq-sphere", 0]["n_train"] and runs["vmf", 0]["components"] in (2, 4)
    for s in (0, 1):
        vq, kde = runs["vq-sphere", s], runs["vmf-kde", s]
        assert vq["val_nll_floor"] <= vq["initial_val_nll"] + 1e-9
        if vq["kernel_alpha"] == 0:  # started at the vmf-kde row's own estimate
            assert vq["kernel_kappa"] == kde["kappa"] and vq["val_nll_floor"] <= kde["val_nll"] + 1e-9
        assert kde["fit_seconds"] > 0 and vq["fit_seconds"] > 0 and kde["test_nll_floor"] == kde["test_nll"]

    table = json.loads((out / "table.json").read_text())
    assert list(table["rows"]) == ["vmf", "vmf+floor", "vmf-kde", "vq-sphere", "vq-sphere+floor", "cef"]
    for row, model, key in [("vmf", "vmf", "test_nll"), ("vq-sphere", "vq-sphere", "test_nll"), ("cef", "cef", "test_nll"),
                            ("vmf+floor", "vmf", "test_nll_floor"), ("vq-sphere+floor", "vq-sphere", "test_nll_floor"),
                            ("vmf-kde", "vmf-kde", "test_nll")]:
        values = [runs[model, s][key] for s in (0, 1)]
        cell = table["rows"][row]["volcano"]
        assert cell["values"] == values and cell["seeds"] == [0, 1]
        assert cell["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert cell["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert all(r["val_nll_floor"] <= r["val_nll"] for (m, _), r in runs.items() if m != "cef")
    # the two seeds are two different splits, so the runs differ
    assert runs["vmf", 0]["test_nll"] != runs["vmf", 1]["test_nll"]

    rows = list(csv.DictReader((out / "table.csv").open()))
    ours = {r["method"]: r for r in rows if r["source"] == "this run"}
    assert float(ours["vq-sphere"]["mean"]) == table["rows"]["vq-sphere"]["volcano"]["mean"]
    assert {r["method"] for r in rows if r["source"] == "published"} == set(earth_report.PUBLISHED)

    md = (out / "table.md").read_text()
    vq = table["rows"]["vq-sphere"]["volcano"]
    assert earth_report._cell(vq["mean"], vq["std"]) in md
    assert "| Mixture of Kent | published | unit sphere | −0.80±0.47 |" in md
    summary = (out / "summary.md").read_text()
    assert "Wall time of this invocation" in summary and "Load average" in summary and "--earth" in summary
    assert (out / "figures" / "volcano.png").stat().st_size > 0 and (out / "figures" / "volcano.pdf").exists()

    # a second invocation reuses every finished run
    before = {k: (out / "runs" / "volcano" / k[0] / f"seed-{k[1]}" / "result.json").stat().st_mtime_ns for k in runs}
    assert earth_cli.main(argv + ["--no-figures"]) == 0
    after = {k: (out / "runs" / "volcano" / k[0] / f"seed-{k[1]}" / "result.json").stat().st_mtime_ns for k in runs}
    assert before == after
    assert json.loads((out / "table.json").read_text())["report"]["skipped"] == 8
    invocations = json.loads((out / "invocations.json").read_text())
    assert [(i["trained"], i["skipped"]) for i in invocations] == [(8, 0), (0, 8)]
    assert "summed over the 1 invocation(s) that trained runs" in (out / "summary.md").read_text()
