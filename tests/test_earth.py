from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vqflows.datasets.earth import (
    EARTH_DATASETS,
    EarthSplits,
    latlon_to_xyz,
    load_earth,
    read_latlon,
    xyz_to_latlon,
)

DATA_DIR = Path(os.environ.get("VQFLOWS_EARTH_DIR", "/work/shared/data/earth"))
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"earth data not found in {DATA_DIR}")

# Row counts as documented with the data files.
EXPECTED_ROWS = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}


def write(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- coordinates


def test_latlon_to_xyz_known_points():
    lat = np.array([0.0, 0.0, 90.0, -90.0, 0.0, 45.0])
    lon = np.array([0.0, 90.0, 123.0, 0.0, 180.0, -90.0])
    expected = np.array([
        [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-1, 0, 0], [0, -np.sqrt(0.5), np.sqrt(0.5)],
    ])
    np.testing.assert_allclose(latlon_to_xyz(lat, lon), expected, atol=1e-15)


def test_latlon_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    lat = rng.uniform(-89.9, 89.9, 500)
    lon = rng.uniform(-179.9, 179.9, 500)
    xyz = latlon_to_xyz(lat, lon)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-15)
    back_lat, back_lon = xyz_to_latlon(xyz)
    np.testing.assert_allclose(back_lat, lat, atol=1e-10)
    np.testing.assert_allclose(back_lon, lon, atol=1e-10)

    t = latlon_to_xyz(torch.from_numpy(lat).float(), torch.from_numpy(lon).float())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (500, 3)
    t_lat, t_lon = xyz_to_latlon(t)
    assert t_lat.dtype == torch.float32
    np.testing.assert_allclose(t_lat.numpy(), lat, atol=1e-3)
    np.testing.assert_allclose(t_lon.numpy(), lon, atol=1e-3)


def test_xyz_to_latlon_conventions_and_errors():
    lat, lon = xyz_to_latlon(np.array([[-2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, -1.0, 0.0]]))
    np.testing.assert_allclose(lat, [0.0, 90.0, 0.0])
    np.testing.assert_allclose(lon, [180.0, 0.0, -90.0])
    with pytest.raises(ValueError, match=r"xyz: expected shape \(\*, 3\), got \(4, 2\)"):
        xyz_to_latlon(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-zero"):
        xyz_to_latlon(np.zeros((1, 3)))


# ---------------------------------------------------------------- reading


def test_read_latlon_comments_header_and_blank_lines(tmp_path):
    path = write(tmp_path, "# source: somewhere\n# second comment\nLatitude,Longitude\n10.5,-20\n\n  # indented comment\n-45, 170.25\n")
    np.testing.assert_array_equal(read_latlon(path), [[10.5, -20.0], [-45.0, 170.25]])


def test_read_latlon_without_header(tmp_path):
    path = write(tmp_path, "# only a comment\n1,2\n3,4")  # no final newline
    np.testing.assert_array_equal(read_latlon(path), [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("lat,lon\n1,2\n3\n", 3, "expected 2 comma-separated numbers"),
        ("lat,lon\n1,2\n3,4,5\n", 3, "expected 2 comma-separated numbers"),
        ("# c\n1,2\n3,east\n", 3, "expected 2 comma-separated numbers"),
        ("12.5,abc\n", 1, "expected 2 comma-separated numbers"),  # a half-numeric line is no header
        ("lat,lon\n95,10\n", 2, r"expected a latitude in \[-90, 90\] degrees, got 95.0"),
        ("lat,lon\n1,2\n-90.5,0\n", 3, "expected a latitude in"),
        ("lat,lon\nnan,10\n", 2, "expected finite latitude and longitude"),
        ("lat,lon\n10,inf\n", 2, "expected finite latitude and longitude"),
        ("lat,lon\n10,400\n", 2, r"expected a longitude in \[-360, 360\]"),
        ("lat,lon\n1,2\nlat,lon\n", 3, "expected 2 comma-separated numbers"),  # a second header is an error
    ],
)
def test_read_latlon_rejects_bad_rows(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"events\.csv, line {line}: {message}"):
        read_latlon(path)


def test_read_latlon_missing_or_empty_file(tmp_path):
    missing = tmp_path / "nowhere" / "missing.csv"
    with pytest.raises(ValueError, match=r"missing\.csv.*not found"):
        read_latlon(missing)
    with pytest.raises(ValueError, match="expected at least one latitude, longitude row"):
        read_latlon(write(tmp_path, "# nothing\nlat,lon\n"))


# ---------------------------------------------------------------- loading and splitting


def test_load_earth_splits_a_file(tmp_path):
    rng = np.random.default_rng(1)
    latlon = np.column_stack([rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)])
    path = write(tmp_path, "lat,lon\n" + "\n".join(f"{float(a)!r},{float(b)!r}" for a, b in latlon))
    s = load_earth(path, seed=0)
    assert isinstance(s, EarthSplits) and s.name == "events" and s.features == 3
    assert (len(s.train), len(s.val), len(s.test)) == (160, 20, 20)
    for part in ("train", "val", "test"):
        x = getattr(s, part)
        assert x.dtype == torch.float32
        torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x)))
        # Each split lines up row for row with its latitudes and longitudes.
        torch.testing.assert_close(x, torch.from_numpy(latlon_to_xyz(*s.split_latlon(part).T)).float())
    np.testing.assert_array_equal(s.latlon, latlon)
    rows = np.concatenate([s.indices[p] for p in ("train", "val", "test")])
    np.testing.assert_array_equal(np.sort(rows), np.arange(200))  # disjoint and complete

    again = load_earth(str(path), seed=0)
    torch.testing.assert_close(again.train, s.train, rtol=0, atol=0)
    other = load_earth(path, seed=1)
    assert not np.array_equal(other.indices["test"], s.indices["test"])


def test_load_earth_unknown_name_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="name: expected one of 'volcano', 'earthquake', 'flood', 'fire'"):
        load_earth("tsunami", data_dir=tmp_path)
    with pytest.raises(ValueError, match="data_dir: expected the folder holding 'fire.csv', got None"):
        load_earth("fire")
    with pytest.raises(ValueError, match=r"fire\.csv.*not found"):
        load_earth("fire", data_dir=tmp_path)
    with pytest.raises(ValueError, match="seed: expected a non-negative integer"):
        load_earth(write(tmp_path, "1,2\n" * 20), seed=-1)


@needs_data
@pytest.mark.parametrize("name", list(EARTH_DATASETS))
def test_real_files_row_counts_and_splits(name):
    s = load_earth(name, data_dir=DATA_DIR, seed=0)
    n = EXPECTED_ROWS[name]
    assert s.name == name and s.latlon.shape == (n, 2)
    assert (len(s.train), len(s.val), len(s.test)) == (round(0.8 * n), round(0.1 * n), n - round(0.8 * n) - round(0.1 * n))
    assert not np.array_equal(load_earth(name, data_dir=DATA_DIR, seed=1).indices["test"], s.indices["test"])
