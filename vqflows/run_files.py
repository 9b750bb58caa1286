"""The files of a run folder: its mark and fingerprint (``run.json``), its state, the data it was trained
on, its training curve, and the checks that a folder's files are the ones a run wrote.

:mod:`vqflows.runs` trains into a folder and reads one back with these.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io as _io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import datasets
from .config import FORMAT, MARKER, RUN_FILES, RunConfig
from .io import read_json, write_json, write_text
from .training import History, digest

#: Hidden folders inside a run folder: where ``overwrite`` builds the new run, and where it moves the
#: old one aside while swapping them.
STAGING, ASIDE = ".vqflows-new-", ".vqflows-old-"


def write_marker(out: Path, state: str, splits: datasets.Splits) -> None:
    """``run.json``: the run's state and the SHA-256 of its config, data and (once saved) model files."""
    files = ["config.json", *(["data.json"] if (out / "data.json").exists() else [])]
    if state != "running":
        files += [f"model/{p.name}" for p in sorted((out / "model").iterdir()) if p.is_file()]
    write_run_json(out / MARKER, {"format": FORMAT, "state": state,
                               "sha256": {"data": splits_digest(splits),
                                          **{name: file_digest(out / name) for name in files}}})


def splits_digest(splits: datasets.Splits) -> str:
    return digest(splits.train, splits.val, splits.test)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remove_hidden(out: Path, prefix: str) -> None:
    """Remove the hidden folders ``prefix*`` that a killed writer left in ``out`` (the caller holds the claim)."""
    for p in out.glob(f"{prefix}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def swap_in(out: Path, stage: Path) -> None:
    """Put the finished run in ``stage`` in place of the run in ``out``, entry by entry (each a rename).

    ``metrics.json`` leaves first and comes back last, so that the folder never reads as a finished
    run while the two are mixed; the old run's files wait in a hidden folder until the swap is done.
    Files of ``out`` that are not run files (the user's) stay.
    """
    aside = out / f"{ASIDE}{os.getpid()}"
    aside.mkdir()
    order = ["metrics.json", *(n for n in RUN_FILES if n != "metrics.json"), "model"]
    moved: list[tuple[Path, Path]] = []
    try:
        for name in order:
            if (out / name).exists():
                os.replace(out / name, aside / name)
                moved.append((out / name, aside / name))
        for name in reversed(order):
            if (stage / name).exists():
                os.replace(stage / name, out / name)
                moved.append((stage / name, out / name))
    except BaseException:  # put everything back where it was: the old run stays
        for source, target in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(target, source)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint files: ``checkpoint.pt``, or one per trained candidate of a selection
    (:func:`vqflows.selection.candidate_checkpoint`)."""
    return sorted(out.glob("checkpoint*.pt"))


def clear(out: Path) -> None:
    """Remove the files a run writes (never anything else the folder holds)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for path in checkpoints(out):
        path.unlink(missing_ok=True)
    shutil.rmtree(out / "model", ignore_errors=True)


def read_config(path: Path) -> RunConfig:
    """The :class:`RunConfig` stored in ``path``, every key and value checked."""
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: expected a readable run config, got {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: expected a JSON object of run settings, got unreadable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of run settings, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"{path}: expected only run settings ({', '.join(sorted(fields))}), "
                         f"got unknown key(s) {', '.join(map(repr, unknown))}")
    try:
        base = RunConfig(model=raw.get("model", RunConfig.model))
        return base.with_overrides({k: v for k, v in raw.items() if k != "model"})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def run_record(path: Path) -> dict:
    """The run's ``run.json`` (``{}`` for a run written before it existed)."""
    if not (path / MARKER).exists():
        return {}
    record = read_json(path / MARKER)
    if not (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("sha256", {}), dict)):
        raise ValueError(f"{path / MARKER}: expected the record written by the run, got an unreadable file")
    return record


def check_files(path: Path) -> None:
    """Refuse a run whose config, data record or model files differ from those it wrote (``run.json``)."""
    recorded = run_record(path).get("sha256", {})
    for name, sha in recorded.items():
        if name == "data":
            continue
        now = file_digest(path / name) if (path / name).is_file() else None
        if now != sha:
            change = "missing" if now is None else f"changed since training (sha256 {now[:12]}..."
            raise ValueError(f"run: expected the files the run in {str(path)!r} wrote, got {name} {change}"
                             f"{', recorded ' if now else ' (recorded '}{str(sha)[:12]}...); "
                             f"train the run again rather than edit its files")


def data_record(path: Path) -> dict | None:
    """The data file a run was trained on (``data.json``: absolute path, sha256), or ``None`` for a built-in set."""
    if not (path / "data.json").exists():
        return None
    try:
        record = json.loads((path / "data.json").read_text())
        if not (isinstance(record.get("path"), str) and isinstance(record.get("sha256"), str)):
            raise TypeError(record)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / 'data.json'}: expected the data file's path and sha256, got unreadable data "
                         f"({type(e).__name__})") from None
    return record


def check_data(path: Path, splits: datasets.Splits) -> None:
    """Refuse a data file whose bytes differ from those the run at ``path`` was trained on."""
    record = data_record(path)
    if record is not None and splits.sha256 != record["sha256"]:
        raise ValueError(f"dataset: expected the file the run was trained on (sha256 {record['sha256'][:12]}...), "
                         f"got a changed file {splits.path!r} (sha256 {str(splits.sha256)[:12]}...)")


def write_run_json(path: Path, obj: Any) -> None:
    write_json(path, obj)


def write_history(out: Path, history: History) -> None:
    h = history.to_dict()
    write_run_json(out / "history.json", h)
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "train_loss", "val_log_likelihood", "epoch_seconds"])
    for row in zip(h["epoch"], h["train_loss"], h["val_log_likelihood"], h["epoch_seconds"]):
        w.writerow(row)
    write_text(out / "history.csv", buf.getvalue())
