"""Real events on the Earth's surface as points on the unit sphere S² in R³.

Each event is a (latitude, longitude) pair in decimal degrees, mapped to the unit vector

    x = cos(lat) cos(lon),  y = cos(lat) sin(lon),  z = sin(lat).

The four standard sets (volcanic eruptions, earthquakes, floods, fires) are read from CSV files in a
folder given by the caller; nothing is downloaded. The protocol is a random 80/10/10 split, a new
one per seed, and densities are w.r.t. the area measure of the unit sphere (total area 4π, so the
uniform density scores ln 4π ≈ 2.531 nats).

Letters: N points.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..geometry import latlon_to_xyz, xyz_to_latlon
from .base import Splits, _rng, split_sizes
from .files import is_number

# The lat/lon conversions live in :mod:`vqflows.geometry` and are part of this module's interface.
__all__ = [
    "EARTH_DATASETS",
    "EARTH_SPLITS",
    "EarthSplits",
    "earth_path",
    "latlon_to_xyz",
    "load_earth",
    "read_latlon",
    "xyz_to_latlon",
]

#: File name of each standard set inside the data folder.
EARTH_DATASETS = {
    "volcano": "volerup.csv",
    "earthquake": "quakes_all.csv",
    "flood": "flood.csv",
    "fire": "fire.csv",
}

#: Fractions of the rows that go to the train, validation and test splits.
EARTH_SPLITS = (0.8, 0.1, 0.1)


def read_latlon(path: str | os.PathLike) -> np.ndarray:
    """Read a CSV of ``latitude, longitude`` rows in degrees: ``-> (N, 2)`` float64.

    Lines whose first non-blank character is ``#`` and blank lines are skipped; the first other
    line is a header when none of its fields is a number. Every data row must hold exactly two
    finite numbers with ``|lat| <= 90`` and ``|lon| <= 360``.

    Raises:
        ValueError: the file is missing or unreadable, holds no data rows, or a row is malformed
            (the message names the path, the line number and what was expected).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"path: expected an existing CSV file of latitude, longitude rows, got {str(path)!r} (not found)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"path: expected a readable text file, got {str(path)!r} ({e})") from None

    rows = []
    seen_first = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if not seen_first:
            seen_first = True
            if not any(is_number(f) for f in fields):
                continue
        where = f"{path}, line {number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 2 comma-separated numbers (latitude, longitude), got {stripped!r}")
        try:
            lat, lon = float(fields[0]), float(fields[1])
        except ValueError:
            raise ValueError(f"{where}: expected 2 comma-separated numbers (latitude, longitude), got {stripped!r}") from None
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise ValueError(f"{where}: expected finite latitude and longitude, got {stripped!r}")
        if abs(lat) > 90:
            raise ValueError(f"{where}: expected a latitude in [-90, 90] degrees, got {lat}")
        if abs(lon) > 360:
            raise ValueError(f"{where}: expected a longitude in [-360, 360] degrees, got {lon}")
        rows.append((lat, lon))
    if not rows:
        raise ValueError(f"path: expected at least one latitude, longitude row, got none in {str(path)!r}")
    return np.asarray(rows, dtype=np.float64)


@dataclass(kw_only=True)
class EarthSplits(Splits):
    """Train, validation and test unit vectors of one Earth dataset, each ``(N_split, 3)`` float32.

    Besides the :class:`~vqflows.datasets.base.Splits` fields:

    Attributes:
        latlon: every row of the file in file order, ``(N, 2)`` float64 degrees.
        indices: for ``"train"``, ``"val"`` and ``"test"``, the rows of :attr:`latlon` that make
            that split, in the split's order (``latlon[indices["test"]]`` pairs with ``test``).
        path: the file the rows were read from.
    """

    latlon: np.ndarray
    indices: dict[str, np.ndarray]
    path: Path

    def split_latlon(self, part: str) -> np.ndarray:
        """Latitude and longitude of one split, ``(N_split, 2)``, row for row with that split."""
        if part not in self.indices:
            raise ValueError(f"part: expected one of {', '.join(map(repr, self.indices))}, got {part!r}")
        return self.latlon[self.indices[part]]


def earth_path(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """The CSV file behind a standard name (inside ``data_dir``) or an explicit file path.

    A string is a standard name when it has no path separator and no ``.csv`` suffix; any other
    string or path-like is taken as a file path.
    """
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        if name_or_path not in EARTH_DATASETS:
            raise ValueError(
                f"name: expected one of {', '.join(map(repr, EARTH_DATASETS))} or a path to a CSV file, "
                f"got {name_or_path!r}"
            )
        if data_dir is None:
            raise ValueError(
                f"data_dir: expected the folder holding {EARTH_DATASETS[name_or_path]!r}, got None"
            )
        return Path(data_dir) / EARTH_DATASETS[name_or_path]
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path: expected a dataset name or a path, got {type(name_or_path).__name__}")  # noqa: TRY004 - bad input is a ValueError throughout
    return Path(name_or_path)


def load_earth(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
               seed: int | None = 0) -> EarthSplits:
    """Read an Earth dataset and split it at random 80/10/10 into unit vectors on S².

    Arguments:
        name_or_path: one of :data:`EARTH_DATASETS` (read from ``data_dir``) or a CSV path.
        data_dir: the folder holding the standard files; needed only for a name.
        seed: seeds the permutation; each seed gives a different split, the same seed the same.

    Returns:
        An :class:`EarthSplits` whose ``train``, ``val`` and ``test`` are float32 ``(N_split, 3)``
        tensors; sizes are ``round(0.8 N)``, ``round(0.1 N)`` and the rest.

    Example:
        >>> s = load_earth("flood", data_dir="/path/to/earth", seed=0)  # doctest: +SKIP
        >>> s.train.shape, s.val.shape, s.test.shape  # doctest: +SKIP
        (torch.Size([3900, 3]), torch.Size([488, 3]), torch.Size([487, 3]))
    """
    path = earth_path(name_or_path, data_dir)
    rng = _rng(seed)
    latlon = read_latlon(path)
    sizes = split_sizes(len(latlon), EARTH_SPLITS)
    order = rng.permutation(len(latlon))
    parts = np.split(order, np.cumsum(sizes)[:-1])
    xyz = torch.from_numpy(latlon_to_xyz(latlon[:, 0], latlon[:, 1])).float()
    train, val, test = (xyz[torch.from_numpy(p)].contiguous() for p in parts)
    name = name_or_path if isinstance(name_or_path, str) and name_or_path in EARTH_DATASETS else path.stem
    return EarthSplits(name, train, val, test, latlon=latlon,
                       indices=dict(zip(("train", "val", "test"), parts)), path=path)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or (os.altsep is not None and os.altsep in s) or s.lower().endswith(".csv")
