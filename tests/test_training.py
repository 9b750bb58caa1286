"""The training loop: objectives, hooks, resuming bit for bit, charts kept, data-parallel equivalence."""

from __future__ import annotations

import os
import socket

import pytest
import torch

import vqflows
from vqflows import EarlyStopping, build, datasets, fit, train_flow
from vqflows.training import TrainConfig, cosine, fit_chart_weights, fit_partition
from vqflows.training.objective import cell_loss, mixture_loss, nearest_penalty


def _data(n=600, seed=0):
    s = datasets.load("helix", n=n, seed=seed)
    return s.train, s.val


def _small(charts=4, **kw):
    torch.manual_seed(0)
    return build(3, "maf", charts, transforms=2, hidden_features=(16, 16), vq_hidden=(16,), **kw)


def test_mixture_loss_over_all_charts_is_the_exact_negative_log_likelihood():
    train, _ = _data()
    model = _small().double()
    fit_partition(model, train.double(), epochs=2)
    fit_chart_weights(model, train.double())
    x = train[:50].double()
    every = torch.arange(model.K).expand(50, -1)
    torch.testing.assert_close(mixture_loss(model, x, every), -model.log_prob(x, grad=True))
    top = model.top_charts(x, 2)
    assert top.shape == (50, 2) and torch.equal(top[:, 0], model.assign(x))
    assert (mixture_loss(model, x, top) >= -model.log_prob(x) - 1e-12).all()  # fewer charts: an upper bound
    torch.testing.assert_close(mixture_loss(model, x, top), -model.log_prob_bound(x, top=2), rtol=0, atol=1e-12)
    # the hard-cell loss is -log p(x | k) in the point's chart (a full flow has no penalty)
    k = model.assign(x)
    torch.testing.assert_close(cell_loss(model, x, k), -model.chart_log_prob(x).gather(1, k[:, None])[:, 0],
                               rtol=0, atol=1e-12)
    assert torch.equal(nearest_penalty(model, x), torch.zeros(50, dtype=torch.float64))


def test_mixture_objective_trains_and_learns_weights():
    train, val = _data()
    model = _small()
    before = None

    def grab(epoch, m, h):
        nonlocal before
        if epoch == 1:
            before = m.log_weights.clone()

    h = fit(model, train, val, epochs=3, chart_epochs=2, objective="mixture", top=2, callbacks=[grab])
    assert h.epochs == 3 and all(map(torch.isfinite, map(torch.tensor, h.train_loss)))
    assert torch.allclose(model.log_weights.exp().sum(), torch.tensor(1.0), atol=1e-5)
    with pytest.raises(ValueError, match="objective: expected one of 'cells', 'mixture'"):
        fit(model, train, val, epochs=1, objective="em")


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    train, val = _data()
    straight = _small()
    fit(straight, train, val, epochs=4, chart_epochs=2, checkpoint=tmp_path / "a.pt")

    def stop(epoch, m, h):
        if epoch == 2:
            raise KeyboardInterrupt

    broken = _small()
    h = fit(broken, train, val, epochs=4, chart_epochs=2, checkpoint=tmp_path / "b.pt", callbacks=[stop])
    assert h.interrupted and (tmp_path / "b.pt").exists()
    resumed = _small()  # a fresh process would rebuild the model, then resume from the file
    h2 = fit(resumed, train, val, epochs=4, chart_epochs=2, checkpoint=tmp_path / "b.pt")
    assert h2.resumed_at == 1 and h2.epochs == 4  # the interrupt came before epoch 2 was saved
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_packs_its_state_dicts_and_reads_them_back_exactly(tmp_path):
    from vqflows.training.checkpoint import pack, read_checkpoint, unpack
    train, val = _data()
    model = _small()
    fit(model, train, val, epochs=2, chart_epochs=2, checkpoint=tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # tensors and plain data only
    assert set(raw["model"]) == {"packed", "flat"} and len(raw["model"]["flat"]) <= 3  # one tensor per dtype
    state = read_checkpoint(tmp_path / "c.pt")
    assert state["model"].keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(state["best"].values(), model.state_dict().values()))
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.randn(3, 2)
    opt.param_groups[0]["params"][1].grad = torch.randn(4)
    opt.step()
    nested = {"opt": opt.state_dict(), "odd": [torch.zeros(0), torch.tensor(3), torch.ones(2, dtype=torch.bool),
                                              torch.arange(3.0, dtype=torch.float64)], "none": None, "t": (1, 2.5, "x")}
    back = unpack(pack(nested))
    assert back["opt"]["param_groups"] == nested["opt"]["param_groups"]  # int keys, tuples (betas) and all
    for key in nested["opt"]["state"]:
        for name, value in nested["opt"]["state"][key].items():
            assert torch.equal(back["opt"]["state"][key][name], value) and back["opt"]["state"][key][name].dtype == value.dtype
    for a, b in zip(back["odd"], nested["odd"]):
        assert torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape
    assert back["none"] is None and back["t"] == (1, 2.5, "x")
    assert pack({"f": print}) == {"f": print}  # not plain data: left as it is
    previous = {**raw, "model": state["model"], "best": state["best"], "optimizer": state["optimizer"]}
    torch.save(previous, tmp_path / "c.pt")  # the previous layout, state dicts as they are: still read
    again = read_checkpoint(tmp_path / "c.pt")
    assert all(torch.equal(a, b) for a, b in zip(again["model"].values(), state["model"].values()))
    raw["model"]["packed"] = raw["model"]["packed"][:-5]
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="damaged state"):
        read_checkpoint(tmp_path / "c.pt")


def test_train_flow_hooks_schedule_clip_and_fresh_data():
    train, val = _data()
    model = _small()
    fit_partition(model, train, epochs=2)
    fit_chart_weights(model, train)
    seen, lrs = [], []
    g = torch.Generator().manual_seed(0)

    def data(epoch):  # a fresh jitter each epoch, as dequantisation does
        seen.append(epoch)
        return train + 0.01 * torch.randn(train.shape, generator=g)

    class Record:
        began = False

        def on_train_begin(self, m, h):
            self.began = True

        def __call__(self, epoch, m, h):
            lrs.append(opt_lr[0])

    opt_lr = [None]

    def optimizer(params, lr, weight_decay):
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        opt_lr[0] = opt
        return opt

    rec = Record()
    h = train_flow(model, data, None, epochs=3, batch_size=64, optimizer=optimizer, lr=0.01, scheduler=cosine,
                   clip_grad=1.0, early_stopping=None,
                   callbacks=[rec, lambda e, m, h: lrs.__setitem__(-1, m and opt_lr[0].param_groups[0]["lr"])])
    assert seen == [1, 2, 3] and rec.began and h.epochs == 3 and h.best_epoch == 3
    assert lrs[0] > lrs[1] > lrs[2] >= 0 and lrs[0] < 0.01  # annealed from the configured rate
    assert isinstance(opt_lr[0], torch.optim.SGD)
    with pytest.raises(ValueError, match="clip_grad: expected a finite number > 0"):
        train_flow(model, train, epochs=1, clip_grad=-1.0, early_stopping=None)
    with pytest.raises(ValueError, match="val: expected validation points"):
        train_flow(model, train, epochs=1, early_stopping=EarlyStopping())


def test_further_training_keeps_the_charts():
    train, val = _data()
    model = _small()
    fit(model, train, val, epochs=1, chart_epochs=2)
    codebook = model.partition.codebook.clone()
    fit(model, train, val, epochs=1, fit_charts=False, lr=1e-4)
    assert torch.equal(model.partition.codebook, codebook)
    assert all(p.requires_grad for p in model.partition.parameters())  # unfrozen again after training


def test_fit_restores_threads_and_the_callers_random_state():
    train, val = _data(300)
    model = _small(2)
    torch.set_num_threads(2)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fit(model, train, val, epochs=1, chart_epochs=1, threads=1)
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.rand(3), expected)


def test_constant_data_is_refused_clearly():
    with pytest.raises(ValueError, match="train: expected data with non-zero spread, got constant values"):
        fit(_small(2), torch.ones(50, 3), epochs=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, state: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train, val = _data()
        model = vqflows.VQFlow.load(state).double()
        train_flow(model, train.double(), val.double(), epochs=int(os.environ.get("DDP_EPOCHS", 2)), batch_size=64, early_stopping=EarlyStopping(patience=5))
        if rank == 0:
            model.save(out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_take_the_same_steps_as_one_process(tmp_path):
    """2 ranks with global batch B end with the parameters of 1 process with batch B (float64 tolerance)."""
    train, val = _data()
    model = _small().double()
    fit_partition(model, train.double(), epochs=2)
    fit_chart_weights(model, train.double())
    model.save(tmp_path / "start")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "start"), str(tmp_path / "ddp")),
                                nprocs=2, join=True)
    one = vqflows.VQFlow.load(tmp_path / "start").double()
    train_flow(one, train.double(), val.double(), epochs=2, batch_size=64, early_stopping=EarlyStopping(patience=5))
    two = vqflows.VQFlow.load(tmp_path / "ddp").double()
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
    x = val[:20].double()
    torch.testing.assert_close(two.log_prob(x), one.log_prob(x), rtol=1e-9, atol=1e-9)


def test_torchrun_trains_one_run_with_two_gloo_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m vqflows train``: one run folder, written by rank 0, that loads and scores."""
    import subprocess
    import sys

    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "vqflows", "train", "--dataset", "helix", "--out", str(out),
           "--epochs", "2", "--json", "--set", "n=1000", "charts=4", "chart_epochs=2", "hidden=16", "transforms=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"test_log_likelihood"') == 1  # only rank 0 reports
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    from vqflows.runs import evaluate_run

    again = evaluate_run(out)
    assert again["test_log_likelihood"] == pytest.approx(metrics["test_log_likelihood"], abs=1e-6)
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_compiled_loss_trains_like_the_eager_one():
    """``compile=True`` (opt-in) runs the same loss through torch.compile: same losses to float tolerance."""
    train, val = _data(400)
    eager, compiled = _small(2), _small(2)
    h1 = fit(eager, train, val, epochs=2, chart_epochs=1, early_stopping=None)
    h2 = fit(compiled, train, val, epochs=2, chart_epochs=1, early_stopping=None, compile=True)
    assert h2.train_loss == pytest.approx(h1.train_loss, rel=1e-4, abs=1e-4)


def test_one_config_object_or_keyword_overrides_train_alike():
    train, val = _data(400)
    config = TrainConfig(epochs=3, chart_epochs=1, lr=1e-3, early_stopping=EarlyStopping(patience=2, top=None))
    a, b = _small(2), _small(2)
    ha = fit(a, train, val, config)
    hb = fit(b, train, val, epochs=3, chart_epochs=1, lr=1e-3, early_stopping=EarlyStopping(patience=2, top=None))
    assert ha.train_loss == hb.train_loss and ha.val_log_likelihood == hb.val_log_likelihood
    c = _small(2)
    hc = fit(c, train, val, config, lr=3e-3)  # an override replaces the config's value
    assert hc.train_loss[0] == ha.train_loss[0] and hc.train_loss[1:] != ha.train_loss[1:]
    assert config.lr == 1e-3  # the caller's config is left as it was


def test_unknown_and_bad_settings_are_refused_naming_the_accepted_ones():
    model, x = _small(2), _data(300)[0]
    with pytest.raises(ValueError, match=r"colour: expected one of the training settings \(batch_size, chart_epochs, "):
        fit(model, x, colour="red")
    with pytest.raises(ValueError, match=r"patience: .* \(use early_stopping=EarlyStopping\(patience=...\)\)"):
        fit(model, x, patience=3)
    with pytest.raises(ValueError, match=r"val_points: .*EarlyStopping\(points=...\)"):
        train_flow(model, x, val_points=100)
    with pytest.raises(ValueError, match="lr: expected a finite number > 0, got -1.0"):
        fit(model, x, lr=-1.0)
    with pytest.raises(ValueError, match="early_stopping: expected an EarlyStopping or None, got True"):
        TrainConfig(early_stopping=True)
    with pytest.raises(ValueError, match="config: expected a TrainConfig or None, got dict"):
        fit(model, x, config={"epochs": 2})
    with pytest.raises(ValueError, match=r"val: expected validation points \(M, D\), got a TrainConfig \(pass it as config="):
        fit(model, x, TrainConfig())


def test_records_derive_their_training_settings_from_the_one_config():
    from vqflows.experiments.earth import EarthConfig
    from vqflows.images.study import StudyConfig
    from vqflows.runs import RunConfig
    from vqflows.sklearn import VQFlowDensity

    run = RunConfig(epochs=7, patience=3, lr=1e-3, threads=2, objective="cells").training()
    assert (run.epochs, run.early_stopping.patience, run.lr, run.threads, run.objective) == (7, 3, 1e-3, 2, "cells")
    assert RunConfig(partition="vqae").training() == TrainConfig(device="cpu")  # a run's defaults are the library's
    # but for the members of the stacked default, which wait 5 epochs
    assert RunConfig().training() == TrainConfig(device="cpu", early_stopping=EarlyStopping(patience=5))
    est = VQFlowDensity(epochs=4, weight_decay=0.1, threads=3)
    got = TrainConfig.from_record(est.get_params())
    assert (got.epochs, got.weight_decay, got.threads, got.device) == (4, 0.1, 3, "cpu")
    earth = EarthConfig().training(1e-3, 5, fit_charts=False)
    assert (earth.epochs, earth.batch_size, earth.lr, earth.seed, earth.fit_charts) == (150, 128, 1e-3, 5, False)
    image = StudyConfig().training(seed=4)
    assert (image.epochs, image.early_stopping, image.objective, image.scheduler, image.seed) == (80, None, "cells",
                                                                                                 cosine, 4)


def test_the_settings_load_without_torch():
    import subprocess
    import sys

    code = ("import sys; from vqflows.training.config import TrainConfig; TrainConfig(epochs=3); "
            "from vqflows.training import History, EarlyStopping; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
