"""Image datasets as flattened integer levels: scikit-learn's 8×8 digits and MNIST.

Every image is kept as its integer intensity levels ``k ∈ {0, …, L−1}`` flattened row-major to
``D = H·W`` values, so that dequantisation (:mod:`vqflows.images.dequantize`) and bits/dim are
exact. Splits are drawn with a seeded permutation and never overlap.

MNIST is read from the standard IDX files (LeCun et al., 1998), gzipped or not; the parser
checks the magic number, the element type, the dimensions and the file length.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import one_of

__all__ = ["ImageSplits", "load_images", "read_idx", "write_idx", "DATASETS", "MNIST_FILES"]

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

    @property
    def features(self) -> int:
        """The data dimension ``D = H·W``."""
        return self.shape[0] * self.shape[1]

    def __repr__(self) -> str:
        return (f"ImageSplits(name={self.name!r}, shape={self.shape}, levels={self.levels}, "
                f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)})")


def load_images(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
                download: bool = False) -> ImageSplits:
    """Load an image dataset as integer levels, split into train / validation / test.

    - ``"digits"``: scikit-learn's bundled 8×8 digits (1,797 images, ``L = 17`` levels, no
      files needed); a permutation seeded by ``seed`` gives 1,257 / 270 / 270 images.
    - ``"mnist"``: 28×28 images, ``L = 256``, read from the IDX files in ``data_dir`` (or in
      ``data_dir/MNIST/raw``, torchvision's layout), each gzipped (``.gz``) or not. The test split
      is the official 10,000; validation is the last 10,000 of a ``seed``-permutation of the
      60,000 training images and train the first 50,000. With ``download=True`` missing files
      are fetched with torchvision into ``data_dir`` (default ``~/.cache/vqflows/data``).

    Arguments:
        name: ``"digits"`` or ``"mnist"``.
        data_dir: folder holding the MNIST files; ignored for digits.
        seed: seed of the split permutation.
        download: allow torchvision to download MNIST.

    Example:
        >>> splits = load_images("digits", seed=0)
        >>> splits.train.shape, splits.levels, splits.shape
        (torch.Size([1257, 64]), 17, (8, 8))
    """
    one_of(name, DATASETS, name="name")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if name == "digits":
        return _load_digits(int(seed))
    return _load_mnist(data_dir, int(seed), download)


def _split(name: str, images: np.ndarray, labels: np.ndarray, sizes: tuple[int, int, int],
           seed: int, levels: int, shape: tuple[int, int], test: tuple[np.ndarray, np.ndarray] | None = None
           ) -> ImageSplits:
    """Permute with ``seed`` and cut into consecutive train / val (/ test) blocks."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_train, n_val, n_test = sizes
    parts = np.split(order, [n_train, n_train + n_val])
    if test is None:
        test = images[parts[2]], labels[parts[2]]
    as_levels = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8).reshape(len(a), -1))
    as_labels = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return ImageSplits(
        name=name,
        train=as_levels(images[parts[0]]), val=as_levels(images[parts[1]]), test=as_levels(test[0]),
        train_labels=as_labels(labels[parts[0]]), val_labels=as_labels(labels[parts[1]]),
        test_labels=as_labels(test[1]),
        levels=levels, shape=shape,
    )


def _load_digits(seed: int) -> ImageSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # the bundled data are float counts 0..16 (number of set pixels in a 4×4 block)
    images = np.rint(bunch.data).astype(np.uint8)
    n = len(images)
    n_val = n_test = 270
    return _split("digits", images, bunch.target, (n - n_val - n_test, n_val, n_test), seed, 17, (8, 8))


def _load_mnist(data_dir, seed: int, download: bool) -> ImageSplits:
    if data_dir is None and not download:
        raise ValueError("data_dir: expected the folder holding the MNIST IDX files "
                         f"({', '.join(f for pair in MNIST_FILES.values() for f in pair)}, optionally .gz), "
                         "got None (pass download=True to fetch them with torchvision)")
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
                  test=arrays["test"])


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
        from torchvision.datasets import MNIST
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
