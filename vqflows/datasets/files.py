"""Loading points: a built-in dataset by name, or the user's own ``.npy`` / ``.csv`` / ``.txt`` file.

A file holds an ``(N, D)`` array. ``.csv`` files are comma-separated UTF-8 text, ``.txt`` files comma- or
space-separated (as ``vqflows sample --out x.txt`` writes them); a byte-order mark is allowed, and
``#`` comments and blank lines are skipped. How a text file is read:

* the first line is a header when every cell of it is a name, i.e. not a number (a quoted cell
  counts as a name); a first line of numbers is the first point, except exactly ``0,1,...,D-1``,
  the header pandas writes for unnamed columns, which is read as a header with a warning;
* a first line whose first cell is empty or ``Unnamed: 0`` is the header pandas' ``to_csv`` writes
  above a row index: the index column is dropped, with a warning, and the other columns are the points;
* any other first line that mixes names and numbers is refused, naming its line and column;
* every other line must hold one number per column; the first that does not is refused, naming
  its line and column.

File points have no known density, so their :class:`Splits` carry ``dataset=None``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..checks import as_points, positive_int
from .base import MIN_POINTS, N_POINTS, REGISTRY, SPLITS, Splits, load_builtin, split, split_sizes

#: File suffixes :func:`read_points` understands.
SUFFIXES = (".npy", ".csv", ".txt")


def load(name: str | os.PathLike, n: int | None = None, seed: int | None = 0, *,
         splits: Sequence[float] = SPLITS, min_points: int = MIN_POINTS) -> Splits:
    """Train, validation and test points of a built-in dataset or of a file.

    Arguments:
        name: a registered name (see :func:`names`) or a path to a ``.npy``, ``.csv`` or ``.txt``
            file holding an ``(N, D)`` array.
        n: points to draw from a built-in set (default 10,000); for a file, a seeded random
            subset of ``n`` rows (default: all rows).
        seed: seeds the draw (built-in) or the row permutation (file); equal seeds give
            identical splits.
        splits: fractions ``(train, val, test)`` of the ``n`` points, adding to 1.
        min_points: the fewest points accepted before splitting.

    Returns:
        :class:`Splits` with float32 tensors of shapes ``(N_train, D)``, ``(N_val, D)`` and
        ``(N_test, D)``; ``dataset`` is the generator for built-in sets and ``None`` for files.

    Example:
        >>> s = load("helix", n=1_000, seed=0)
        >>> s.train.shape, s.val.shape, s.test.shape
        (torch.Size([500, 3]), torch.Size([250, 3]), torch.Size([250, 3]))
    """
    if isinstance(name, str) and name in REGISTRY:
        return load_builtin(name, n=N_POINTS if n is None else n, seed=seed, splits=splits, min_points=min_points)
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"dataset: expected a name or a path, got {type(name).__name__}")
    path = Path(name)
    if not path.exists() and path.suffix.lower() not in SUFFIXES:
        known = ", ".join(map(repr, REGISTRY))
        raise ValueError(f"dataset: expected one of {known} or a path to a .npy, .csv or .txt file, got {str(name)!r}")
    points, digest = _read(path, min_points)
    split_sizes(len(points), splits)  # report too few points for the splits before subsetting
    if n is not None:
        n = positive_int(n, name="n", minimum=min_points)
        if n > len(points):
            raise ValueError(f"n: expected at most the {len(points)} rows of {str(path)!r}, got {n}")
        points = points[torch.from_numpy(np.random.default_rng(seed).permutation(len(points))[:n])]
    train, val, test = split(points, splits, seed=seed)
    return Splits(path.stem, train, val, test, dataset=None, path=str(path.resolve()), sha256=digest)


def read_points(path: str | os.PathLike, *, min_points: int = MIN_POINTS) -> torch.Tensor:
    """Read a finite ``(N, D)`` float32 tensor from a ``.npy``, ``.csv`` or ``.txt`` file.

    Raises ``ValueError`` naming the path for a missing file, another suffix, unparsable text,
    an array that is not 2-D, NaN or inf, or fewer than ``min_points`` rows.
    """
    return _read(Path(path), min_points)[0]


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 digest of a file's bytes (how a run recognises its data file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(path: Path, min_points: int) -> tuple[torch.Tensor, str]:
    """The points of ``path`` and the SHA-256 of the very bytes they were parsed from."""
    min_points = positive_int(min_points, name="min_points")
    where = str(path)
    if not path.is_file():
        raise ValueError(f"{where}: expected an existing .npy, .csv or .txt file, got no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{where}: expected a file ending in .npy, .csv or .txt, got {path.suffix or 'no suffix'!r}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{where}: expected a readable file, got {e.strerror or e}") from None
    if not data:
        raise ValueError(f"{where}: expected a {suffix} file of points, got an empty file")
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{where}: expected a NumPy .npy array, got unreadable data ({e})") from None
    else:
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first cell
        except UnicodeDecodeError:
            raise ValueError(f"{where}: expected numbers as text, got binary data") from None
        array = _read_csv(path, text, "," if suffix == ".csv" or "," in text else None)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected a real-valued array, got dtype {getattr(array, 'dtype', type(array))}")
    # Cast first so values beyond float32's range surface as inf in the finiteness check.
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    return as_points(torch.from_numpy(array), name=where, min_points=min_points), hashlib.sha256(data).hexdigest()


#: Header cells that mark a row index column, as pandas' ``to_csv`` writes it (and reads it back).
INDEX_HEADERS = ("", "Unnamed: 0")


def is_number(cell: str) -> bool:
    """Whether a CSV cell reads as a number (``float`` accepts it)."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter: str | None) -> list[str]:
    return [c.strip() for c in line.split(delimiter)]


def _read_csv(path: Path, text: str, delimiter: str | None = ",") -> np.ndarray:
    """The points of a text file separated by ``delimiter`` (``None``: spaces), by the rules in the module's docstring."""
    where = str(path)
    rows = [(i + 1, line.split("#", 1)[0].strip()) for i, line in enumerate(text.splitlines())]
    rows = [(number, content) for number, content in rows if content]
    if not rows:
        return np.zeros((0, 0))

    number, first = rows[0]
    cells = _split(first, delimiter)
    numeric = [is_number(c) for c in cells]
    index = cells[0] in INDEX_HEADERS and len(cells) > 1  # pandas' header above its row index: names follow
    if all(numeric):
        if len(cells) >= 2 and len(rows) > 1 and all(c.isdigit() for c in cells) \
                and [int(c) for c in cells] == list(range(len(cells))):
            warnings.warn(f"{where}: line {number} ({first!r}) read as a header, the column numbers that pandas "
                          f"writes for unnamed columns, not as a point", stacklevel=4)
            rows = rows[1:]
    else:
        mixed = [j for j, c in enumerate(cells) if numeric[j]]
        if mixed and not index:
            text_at = next(j for j, ok in enumerate(numeric) if not ok)
            raise ValueError(f"{where}: line {number}, column {text_at + 1}: expected a number, got "
                             f"{cells[text_at]!r} (a header line holds only names, but column "
                             f"{mixed[0] + 1} of this line is the number {cells[mixed[0]]})")
        rows = rows[1:]
    data = [content for _, content in rows]
    try:
        array = np.loadtxt(data, delimiter=delimiter, ndmin=2, dtype=np.float64) if data else np.zeros((0, len(cells)))
    except ValueError:
        array = None
    if array is None or (data and array.shape[1] != len(cells)):
        _locate(where, rows, len(cells), delimiter)
        raise ValueError(f"{where}: expected {'comma' if delimiter else 'space'}-separated numbers, got a line that does not parse")
    if index:
        warnings.warn(f"{where}: column 1 has no name ({cells[0]!r}): read as a row index, as pandas' to_csv "
                      f"writes it, and left out of the points (save with index=False to avoid it)", stacklevel=4)
        array = array[:, 1:]
    return array


def _locate(where: str, rows: list[tuple[int, str]], columns: int, delimiter: str | None = ",") -> None:
    """Raise ``ValueError`` naming the first line (and column) that is not ``columns`` numbers."""
    for number, content in rows:
        cells = _split(content, delimiter)
        if len(cells) != columns:
            raise ValueError(f"{where}: line {number}: expected {columns} {'comma' if delimiter else 'space'}-separated values, "
                             f"got {len(cells)}")
        for j, cell in enumerate(cells):
            if not is_number(cell):
                raise ValueError(f"{where}: line {number}, column {j + 1}: expected a number, got {cell!r}")
