"""torch conventions: any float dtype, numpy and lists in; forward; sample shapes; rsample; a Distribution view;
bounded memory when no gradient is wanted; overflowing inputs refused; every preset round-trips save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vqflows
from vqflows import VQFlow, build, presets
from vqflows.training import fit_chart_weights, fit_partition


@pytest.fixture(scope="module")
def fitted():
    s = vqflows.datasets.load("helix", n=400, seed=0)
    torch.manual_seed(0)
    model = build(3, "maf", 4, transforms=2, hidden_features=(16,), vq_hidden=(16,))
    vqflows.fit(model, s.train, s.val, epochs=2, chart_epochs=2)
    return model, s.test


@pytest.mark.parametrize("convert", [
    lambda x: x.numpy().astype(np.float64), lambda x: x.double(), lambda x: x.tolist(), lambda x: x.half(),
    lambda x: x.numpy().astype(np.float32),
], ids=["numpy-float64", "tensor-float64", "list", "float16", "numpy-float32"])
def test_inputs_of_any_float_type_are_converted(fitted, convert):
    model, x = fitted
    ref = model.log_prob(x[:10])
    out = model.log_prob(convert(x[:10]))
    assert out.dtype == torch.float32
    # float16 inputs lose digits before conversion; the others are exact in float32
    close = torch.allclose(out, ref, atol=0.2) if isinstance(convert(x[:1]), torch.Tensor) and \
        convert(x[:1]).dtype == torch.float16 else torch.allclose(out, ref, atol=1e-5)
    assert close


def test_forward_is_log_prob_and_eval_scoring_keeps_no_graph(fitted):
    model, x = fitted
    assert not model.training  # fit leaves the model in eval mode
    out = model(x[:20])
    torch.testing.assert_close(out, model.log_prob(x[:20]))
    assert out.grad_fn is None  # nothing to differentiate was asked for
    xg = x[:20].clone().requires_grad_(True)
    model.log_prob(xg).sum().backward()  # a gradient w.r.t. the input is kept when asked
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert model.log_prob(x[:5], grad=True).grad_fn is not None
    model.train()
    try:
        assert model.log_prob(x[:5]).grad_fn is not None  # training mode keeps the graph
    finally:
        model.eval()


def test_sample_shapes_and_rsample_gradients(fitted):
    model, _ = fitted
    assert model.sample().shape == (3,)
    assert model.sample(5).shape == (5, 3)
    assert model.sample((2, 3)).shape == (2, 3, 3)
    assert model.sample(torch.Size([4])).shape == (4, 3)
    x, k = model.sample((2, 5), seed=0, return_charts=True)
    assert k.shape == (2, 5)
    torch.testing.assert_close(model.sample((2, 5), seed=0), x)
    assert model.sample(3).grad_fn is None
    r = model.rsample(64, seed=1)
    r.square().sum().backward()
    grads = [p.grad for p in model.flow.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="sample_shape: expected"):
        model.sample("many")


def test_distribution_view(fitted):
    model, x = fitted
    dist = model.distribution()
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (3,) and dist.batch_shape == ()
    torch.testing.assert_close(dist.log_prob(x[:6]), model.log_prob(x[:6]))
    assert dist.log_prob(x[:6].reshape(2, 3, 3)).shape == (2, 3)
    assert dist.sample((7,)).shape == (7, 3) and dist.rsample((2,)).shape == (2, 3)
    # code written for distributions takes it: a Monte Carlo KL estimate against a Gaussian
    q = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    s = dist.sample((100,))
    assert torch.isfinite((dist.log_prob(s) - q.log_prob(s)).mean())


def test_overflowing_inputs_raise_instead_of_nan(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match=r"x: expected points whose log-density is finite in float32, got 1 row\(s\)"):
        model.log_prob(torch.tensor([[0.0, 0.0, 0.0], [1e30, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="finite values"):
        model.log_prob([[float("inf"), 0.0, 0.0]])
    assert model.log_prob(torch.zeros(0, 3)).shape == (0,)


def test_encode_and_sample_are_batched(fitted):
    model, x = fitted
    z = model.encode(x, chunk=7)
    torch.testing.assert_close(z, model.encode(x))
    torch.testing.assert_close(model.log_prob(x, chunk=5), model.log_prob(x))
    torch.testing.assert_close(model.log_prob_bound(x, "member", chunk=3), model.log_prob_bound(x, "member"))
    torch.testing.assert_close(model.log_prob_bound(x, top=2, chunk=3), model.log_prob_bound(x, top=2))


def _preset_args(name):
    if name.startswith("image-"):
        args = dict(shape=[4, 4], transforms=1, hidden=[8], latent=2, vq_channels=[2], vq_hidden=[8])
        if "-vq-" in name:
            args["charts"] = 3
        return args
    args = dict(features=3, transforms=1, hidden_features=[8], vq_hidden=[8])
    if name.startswith("vq-"):
        args["charts"] = 3
    return args


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_round_trips_save_and_load(name, tmp_path):
    """save → load → identical log_prob, for every model the CLI, benchmarks and studies build."""
    torch.manual_seed(0)
    model = presets.create(name, **_preset_args(name))
    D = model.features
    x = torch.randn(200, D)
    if "sphere" in name:
        x = torch.nn.functional.normalize(x, dim=-1)
    fit_partition(model, x, epochs=1)
    fit_chart_weights(model, x)
    with torch.no_grad():
        for p in model.flow.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.save(tmp_path / "m")
    again = VQFlow.load(tmp_path / "m")
    assert again.spec == model.spec
    torch.testing.assert_close(again.log_prob(x[:16]), model.log_prob(x[:16]), rtol=0, atol=0)


def test_presets_refuse_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="preset: expected one of"):
        presets.create("vq-glow", features=3)
    with pytest.raises(ValueError, match="vq-maf: expected options among"):
        presets.create("vq-maf", features=3, colour="red")
    with pytest.raises(ValueError, match="name: expected a new preset name"):
        presets.register("maf", lambda: None)


def test_a_model_composed_by_hand_explains_how_to_save(tmp_path):
    from vqflows.flows import ZukoFlow

    model = VQFlow(ZukoFlow("maf", 3))
    with pytest.raises(ValueError, match="save its state_dict"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="flow: expected context dimension 3"):
        VQFlow(ZukoFlow("maf", 3), vqflows.charts.VQAutoencoder(3, 4, 3))


def test_models_move_between_devices_and_dtypes():
    """Built on the CPU, moved with .to(): every buffer follows, and so does fitting."""
    model = build(3, "sphere", 3, transforms=1, hidden_features=(8,), vq_hidden=(8,)).double()
    x = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    fit_partition(model, x, epochs=1)
    fit_chart_weights(model, x)
    assert all(t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point())
    assert model.log_prob(x).dtype == torch.float64
    meta = build(3, "maf", 3).to("meta")
    assert all(t.device.type == "meta" for t in meta.state_dict().values())


@pytest.mark.gpu
@pytest.mark.parametrize("flow", ["maf", "sphere", "cef"])
def test_cuda_training_sampling_save_load(flow, tmp_path):
    s = vqflows.datasets.load("spherical", n=600, seed=0)
    x = torch.nn.functional.normalize(s.train, dim=-1) if flow == "sphere" else s.train
    model = build(3, flow, 4, transforms=2, hidden_features=(16,), vq_hidden=(16,))
    vqflows.fit(model, x, epochs=2, chart_epochs=2, device="cuda")
    assert model.log_weights.device.type == "cuda"
    assert model.sample(10).device.type == "cuda"
    lp = model.log_prob(x[:50])
    model.save(tmp_path / "m")
    again = VQFlow.load(tmp_path / "m", map_location="cuda")
    torch.testing.assert_close(again.log_prob(x[:50]), lp)
    torch.testing.assert_close(model.cpu().log_prob(x[:50]), lp.cpu(), atol=1e-4, rtol=1e-4)
