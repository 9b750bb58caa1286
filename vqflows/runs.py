"""Run folders: one trained model with its resolved config, weights, metrics and training curve.

A run folder holds ``run.json`` (the mark of a vqflows run: its state and the SHA-256 of its config,
data and weights), ``config.json`` (the resolved :class:`RunConfig`), ``model/`` (see
:meth:`VQFlow.save`), ``metrics.json`` and ``history.json``/``history.csv``; a run on a file also
holds ``data.json`` (the file's absolute path and SHA-256). Files are written atomically; a
folder without ``metrics.json`` is unfinished, and ``interrupted.json`` marks one stopped by Ctrl-C.

While a run writes, its folder holds ``.lock`` (created exclusively, holding the writer's pid and
host), so a second writer is refused instead of silently mixing two runs. Nothing a finished or
interrupted run made is replaced unless asked (``overwrite``, or ``resume`` for an interrupted run),
and ``overwrite`` builds the new run in a hidden folder inside the old one
(``.vqflows-new-<pid>``) and moves it into place only once it has finished: a new run that fails,
diverges, is interrupted or killed leaves the old run as it was. A folder holding run files that
no vqflows run wrote (no ``run.json``) is never written into.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io as _io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import datasets, presets
from .checks import one_of, positive_int
from .checks import seed as check_seed
from .io import apply_overrides, claim, read_json, write_bytes, write_json, write_text
from .model import VQFlow
from .selection import CANDIDATES, select_charts
from .training import MEMBERSHIPS, OBJECTIVES, History, check_threads, digest, fit

#: Model names: the presets of base flows and their VQ versions (:mod:`vqflows.presets`; the image presets
#: belong to the image study).
MODELS = tuple(name for name in presets.names() if not name.startswith("image-"))

#: Files a run writes into its folder (besides ``model/``); ``overwrite`` removes exactly these.
RUN_FILES = ("run.json", "config.json", "data.json", "metrics.json", "interrupted.json", "history.json",
             "history.csv", "checkpoint.pt")
LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
#: ``run.json``: what marks a folder as a vqflows run, and records the run's fingerprint.
MARKER, FORMAT = "run.json", "vqflows-run"
#: Hidden folders inside a run folder: where ``overwrite`` builds the new run, and where it moves the
#: old one aside while swapping them.
STAGING, ASIDE = ".vqflows-new-", ".vqflows-old-"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``str(error)`` says what its folder kept and how to go on."""


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults are the library's documented choices."""

    dataset: str = "helix"
    model: str = "vq-maf"
    seed: int = 0
    n: int | None = None  # None: 10,000 points of a built-in set, every row of a file
    epochs: int = 100
    patience: int = 10
    # batches of 512 at 2e-3: the same test gaps as 128 at 1e-3 within the seeds' spread, at 0.47x
    # (hard cells) to 0.72x (mixture) the cost per epoch (docs/objective.md)
    batch_size: int = 512
    lr: float = 2e-3
    charts: int | str = 32  # or "auto": the best of selection.CANDIDATES on validation
    partition: str = "vqae"
    latent: int = 3
    m: int | None = None  # None: 2 for vq-cef (overlapping charts), else 1 (hard boundaries)
    eps: float = 0.0
    chart_epochs: int = 30
    transforms: int = 5
    hidden: int = 64
    manifold_dim: int = 2
    frames: bool = True
    flow_options: dict = field(default_factory=dict)
    objective: str = "mixture"  # "cells" with charts=32 batch_size=128 lr=0.001: the paper's Table 1 as published
    top: int = 4
    learn_weights: bool = True
    membership: str = "hard"
    compile: bool = False  # torch.compile the loss: pays on long runs and GPUs, costs tens of seconds cold
    device: str = "cpu"
    threads: int = 1  # small flows are bound by per-operation overhead: one thread is as fast and never oversubscribes

    def __post_init__(self) -> None:
        one_of(self.model, MODELS, name="model")
        one_of(self.objective, OBJECTIVES, name="objective")
        one_of(self.membership, MEMBERSHIPS, name="membership")
        if isinstance(self.charts, str) and self.charts != "auto":
            raise ValueError(f"charts: expected a positive int or 'auto', got {self.charts!r}")
        if self.m is None:
            # an embedding flow's chart surface must reach past its cell to meet its neighbours'
            self.m = 2 if self.model == "vq-cef" else 1
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset: expected a name or a path, got {self.dataset!r}")
        # counts are checked here, before any data is loaded; lr and eps are checked where they are used
        for key, least in (("seed", 0), ("epochs", 1), ("patience", 1), ("batch_size", 1),
                           *((("charts", 1),) if self.charts != "auto" else ()), ("latent", 1), ("m", 1), ("chart_epochs", 0), ("transforms", 1), ("hidden", 1),
                           ("manifold_dim", 1), ("threads", 0), ("top", 1)):
            positive_int(getattr(self, key), name=key, minimum=least)
        check_seed(self.seed)
        if self.n is not None:
            positive_int(self.n, name="n")

    @property
    def flow(self) -> str:
        return self.model.removeprefix("vq-")

    @property
    def is_vq(self) -> bool:
        return self.model.startswith("vq-")

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> RunConfig:
        """A copy with ``key=value`` overrides (:func:`vqflows.io.apply_overrides`); unknown keys and values
        of the wrong type raise ``ValueError``."""
        return apply_overrides(self, overrides)

    def build_model(self, features: int, charts: int | None = None) -> VQFlow:
        """The untrained model of this run for data in ``R^features`` (its preset, so that it saves and loads);
        ``charts`` overrides the config's count (needed when it is ``"auto"``)."""
        charts = charts if charts is not None else self.charts
        if charts == "auto":
            charts = max(CANDIDATES)
        return presets.create(self.model, features=features, charts=charts, partition=self.partition,
                              latent=self.latent, m=self.m if self.is_vq else 1, eps=self.eps,
                              transforms=self.transforms, hidden_features=[self.hidden, self.hidden],
                              manifold_dim=self.manifold_dim, frames=self.frames, flow_options=self.flow_options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_data(config: RunConfig) -> datasets.Splits:
    """The run's splits (built-in name, or a path to a user's ``.npy``/``.csv``)."""
    return datasets.load(config.dataset, n=config.n, seed=config.seed)


@torch.no_grad()
def evaluate(model: VQFlow, splits: datasets.Splits, top: int = 4) -> dict[str, float]:
    """Test/validation log-likelihoods (mean nats per point), the top-``top`` lower bound and its gap to
    the mixture, the oracle and the reconstruction error."""
    out = {
        "test_log_likelihood": float(model.log_prob(splits.test, "mixture").mean()),
        # the lower bound over each point's nearest charts (the mixture objective's), beside the exact mixture
        "test_log_likelihood_top": float(model.log_prob(splits.test, "top", top=top).mean()),
        "top": top,
        "val_log_likelihood": float(model.log_prob(splits.val, "mixture").mean()),
        "oracle_log_likelihood": None,
        "gap_to_oracle": None,
    }
    if splits.dataset is not None:
        oracle = float(splits.dataset.log_prob(splits.test).mean())
        out["oracle_log_likelihood"] = oracle
        out["gap_to_oracle"] = oracle - out["test_log_likelihood"]
    if model.flow.manifold_dim < model.features:
        out["reconstruction_error"] = float(model.reconstruction(splits.test).mean())
    return out


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_run(config: RunConfig, out: str | os.PathLike, *, progress: bool = False, overwrite: bool = False,
              resume: bool = False, callback: Callable[[int, VQFlow, History], None] | None = None
              ) -> dict[str, Any]:
    """Train the run ``config`` into the folder ``out`` and return its metrics.

    The data, model and settings are checked before the folder is touched. The folder is then
    claimed with ``.lock`` (a second writer gets ``ValueError``; every error releases it). A
    finished run is replaced only with ``overwrite``; an unfinished one (e.g. stopped by Ctrl-C)
    only with ``overwrite`` or ``resume``. ``overwrite`` trains the new run in a hidden folder inside
    ``out`` and swaps it in only once it has finished, so that the old run survives a new one that
    fails or is stopped; a folder with run files but no ``run.json`` (not a vqflows run) is refused.
    With ``resume`` the saved settings must match ``config`` (device and threads aside) and the data
    file must be unchanged; training goes on from ``checkpoint.pt`` (written after every epoch) where
    :func:`fit` supports checkpoints, and starts over otherwise.

    On Ctrl-C the best weights so far (if a flow epoch finished) are saved with
    ``interrupted.json``, then :class:`RunInterrupted` says what the folder kept. A run that fails
    on a fresh folder removes what it wrote. ``callback(epoch, model, history)`` is passed to :func:`fit`.
    """
    out = Path(out)
    if overwrite and resume:
        raise ValueError("resume: expected either resume or overwrite, got both")
    check_threads(config.threads)  # absurd counts crash torch's thread pool: refused before anything is made
    if config.threads:
        torch.set_num_threads(config.threads)
    config, rank = _join_process_group(config)
    splits = load_data(config)
    torch.manual_seed(config.seed)  # the initial weights belong to the run, not to the process's history
    model = config.build_model(splits.train.shape[1])
    # refused before the folder is touched; with charts="auto" the fewest candidate charts must fit
    model.check_training_data(splits.train, name=f"{config.dataset} (training split)",
                              charts=min(CANDIDATES) if config.charts == "auto" and config.is_vq else None)
    if rank:  # another rank of a data-parallel run: train beside rank 0, which alone writes the folder
        _fit(config, model, splits, progress=False, callback=callback, checkpoint=out / CHECKPOINT if resume else None)
        return {}

    with _claim(out):
        state = _state(out)
        if state == "foreign":
            held = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                                    if p.name in RUN_FILES or p.name == "model"))
            raise ValueError(f"out: expected a new folder or a vqflows run folder, got {str(out)!r} holding {held} "
                             f"but no {MARKER} (not written by a vqflows run; choose another folder)")
        if state == "finished" and not overwrite:
            raise ValueError(f"out: expected a new or unfinished run folder, got the finished run {str(out)!r} "
                             f"(use overwrite to replace it)")
        if state == "unfinished" and not (overwrite or resume):
            raise ValueError(f"out: expected a new run folder, got the unfinished run {str(out)!r} "
                             f"(use resume to continue it or overwrite to start over)")
        if state == "unfinished" and resume:
            _check_resumable(out, config, splits)
        _remove_hidden(out, STAGING)  # left by a run killed while building beside this one
        if overwrite:
            _remove_hidden(out, ASIDE)  # left by a swap that was killed half-way: being replaced now
        if not (overwrite and state != "new"):
            return _train_into(out, config, model, splits, fresh=state == "new", progress=progress,
                               callback=callback)
        stage = out / f"{STAGING}{os.getpid()}"
        try:
            stage.mkdir()
            metrics = _train_into(stage, config, model, splits, fresh=True, progress=progress, callback=callback)
            _swap(out, stage)
        except RunInterrupted:
            raise RunInterrupted(f"interrupted: nothing replaced, the run in {out} is as it was "
                                 f"(overwrite starts the new run over)") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return metrics


def _train_into(out: Path, config: RunConfig, model: VQFlow, splits: datasets.Splits, *, fresh: bool,
                progress: bool, callback: Callable | None) -> dict[str, Any]:
    """Train into the claimed folder ``out`` (a new run when ``fresh``, else a resumed one, whose first
    files are put back as they were if it fails)."""
    history = None
    kept = {} if fresh else {name: (out / name).read_bytes() for name in (MARKER, "config.json", "data.json")
                             if (out / name).is_file()}
    try:
        _write_json(out / MARKER, {"format": FORMAT, "state": "running"})  # first: the folder is a run from here on
        _write_json(out / "config.json", config.to_dict())
        if splits.path is not None:
            _write_json(out / "data.json", {"path": splits.path, "sha256": splits.sha256,
                                            "rows": sum(len(t) for t in (splits.train, splits.val, splits.test)),
                                            "features": splits.features})
        _write_marker(out, "running", splits)
        model, history, selection = _fit(config, model, splits, progress=progress, callback=callback,
                                         checkpoint=out / CHECKPOINT)
        model.to("cpu")
        metrics = {"dataset": config.dataset, "model": config.model, "seed": config.seed}
        if splits.sha256 is not None:
            metrics["dataset_sha256"] = splits.sha256
        if not history.interrupted:
            metrics.update(evaluate(model, splits, config.top))
        metrics.update(epochs=history.epochs, best_epoch=history.best_epoch,
                       train_seconds=history.train_seconds, chart_seconds=history.chart_seconds,
                       flow_seconds_per_epoch=history.flow_seconds / max(history.epochs, 1),
                       parameters=parameters(model), stopped_early=history.stopped_early,
                       interrupted=history.interrupted)
        if selection is not None:
            metrics.update(charts_selected=model.K, chart_selection=selection)
        model.save(out / "model")
        _write_history(out, history)
        if history.interrupted:
            _write_json(out / "interrupted.json", metrics)
            _write_marker(out, "interrupted", splits)
            raise KeyboardInterrupt
        _write_marker(out, "finished", splits)
        _write_json(out / "metrics.json", metrics)  # last: the folder is a finished run from here on
        for name in ("interrupted.json", CHECKPOINT):  # a finished run has nothing left to resume
            (out / name).unlink(missing_ok=True)
    except KeyboardInterrupt:
        raise RunInterrupted(_kept(out, history)) from None
    except BaseException:
        if fresh:
            _clear(out)
        for name, data in kept.items():
            write_bytes(out / name, data)
        raise
    return metrics


def _write_marker(out: Path, state: str, splits: datasets.Splits) -> None:
    """``run.json``: the run's state and the SHA-256 of its config, data and (once saved) model files."""
    files = ["config.json", *(["data.json"] if (out / "data.json").exists() else [])]
    if state != "running":
        files += [f"model/{p.name}" for p in sorted((out / "model").iterdir()) if p.is_file()]
    _write_json(out / MARKER, {"format": FORMAT, "state": state,
                               "sha256": {"data": _splits_digest(splits),
                                          **{name: _file_digest(out / name) for name in files}}})


def _splits_digest(splits: datasets.Splits) -> str:
    return digest(splits.train, splits.val, splits.test)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_hidden(out: Path, prefix: str) -> None:
    """Remove the hidden folders ``prefix*`` that a killed writer left in ``out`` (the caller holds the claim)."""
    for p in out.glob(f"{prefix}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _swap(out: Path, stage: Path) -> None:
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


def _fit(config: RunConfig, model: VQFlow, splits: datasets.Splits, **options: Any
         ) -> tuple[VQFlow, History, list[dict] | None]:
    """Train ``model`` (or, with ``charts="auto"``, choose the chart count on validation: one model per
    candidate, no checkpoint); returns the trained model, its history and the selection table."""
    if config.charts != "auto" or not config.is_vq:
        return model, fit(model, splits.train, splits.val, **_fit_options(config), **options), None
    options.pop("checkpoint", None)

    def make(k: int) -> VQFlow:
        torch.manual_seed(config.seed)
        return config.build_model(splits.train.shape[1], charts=k)

    return select_charts(make, splits.train, splits.val, **_fit_options(config), **options)


def _fit_options(config: RunConfig) -> dict[str, Any]:
    return dict(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, patience=config.patience,
                chart_epochs=config.chart_epochs, seed=config.seed, device=config.device, objective=config.objective,
                top=config.top, learn_weights=config.learn_weights, threads=config.threads or None,
                membership=config.membership, compile=config.compile)


def _join_process_group(config: RunConfig) -> tuple[RunConfig, int]:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), join the process group — ``nccl`` on CUDA, ``gloo`` on the
    CPU — with each rank on its own GPU; returns the config with that device, and the rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world <= 1:
        return config, 0
    if not dist.is_initialized():
        cuda = torch.device(config.device).type == "cuda"
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            config = dataclasses.replace(config, device=f"cuda:{local}")
        dist.init_process_group("nccl" if cuda else "gloo")
    return config, dist.get_rank()


def _kept(out: Path, history: History | None) -> str:
    """What an interrupted run left in ``out``, and how to go on, in one line."""
    if (out / "model" / "weights.pt").exists() and history is not None:
        if history.best_epoch:
            done = f"{history.epochs} epoch{'s' if history.epochs != 1 else ''} finished"
            what = f"the best weights (epoch {history.best_epoch}; {done}) in {out / 'model'}"
        else:
            what = f"the charts with an untrained flow (no flow epoch finished) in {out / 'model'}"
    else:
        what = f"no weights, only the settings in {out / 'config.json'}"
    how = ("resume continues from the last finished epoch" if (out / CHECKPOINT).exists()
           else "resume or overwrite starts it over")
    return f"interrupted: kept {what}; {how}"


def _state(out: Path) -> str:
    """``"finished"``, ``"unfinished"`` (a run began writing here), ``"new"``, or ``"foreign"``: run files
    (``config.json``, ``model/``, ...) that no vqflows run wrote."""
    if not (any((out / name).exists() for name in RUN_FILES) or (out / "model").exists()):
        return "new"
    if not _is_run(out):
        return "foreign"
    return "finished" if (out / "metrics.json").exists() else "unfinished"


def _is_run(out: Path) -> bool:
    """Whether ``out`` holds a vqflows run: its ``run.json``, or (a run of a version before it) a
    ``config.json`` of run settings only, among them the run's name (dataset, model, seed) and budget."""
    marker = read_json(out / MARKER)
    if isinstance(marker, dict):
        return marker.get("format") == FORMAT
    if (out / MARKER).exists():
        return False
    config = read_json(out / "config.json")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return (isinstance(config, dict) and set(config) <= fields
            and {"dataset", "model", "seed", "epochs", "charts", "lr", "batch_size"} <= set(config))


def _clear(out: Path) -> None:
    """Remove the files a run writes (never anything else the folder holds)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "model", ignore_errors=True)


def _check_resumable(out: Path, config: RunConfig, splits: datasets.Splits) -> None:
    saved = _read_config(out / "config.json")
    ignore = {"device", "threads"}
    differ = [k for k, v in config.to_dict().items() if k not in ignore and saved.to_dict()[k] != v]
    if differ:
        k = differ[0]
        raise ValueError(f"resume: expected the settings of the run in {str(out)!r}, got {k}={getattr(config, k)!r} "
                         f"where the run has {k}={getattr(saved, k)!r}")
    _check_data(out, splits)


@contextlib.contextmanager
def _claim(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (:func:`vqflows.io.claim`) while the body runs; a folder created here and
    left empty is removed."""
    created = not out.exists()
    try:
        with claim(out, name="out"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


def _read_config(path: Path) -> RunConfig:
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


def load_run(path: str | os.PathLike) -> tuple[VQFlow, RunConfig]:
    """The model and config of a run folder; unreadable files raise ``ValueError`` naming them."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"run: expected a run folder with config.json, got {str(path)!r}")
    config = _read_config(path / "config.json")
    where = path / "model"
    try:
        model = VQFlow.load(where)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where / 'config.json'}: expected the model's JSON settings, got unreadable JSON ({e})"
                         ) from None
    except ValueError:
        raise
    except (RuntimeError, EOFError, OSError, TypeError, KeyError, pickle.UnpicklingError) as e:
        detail = (str(e).strip().splitlines() or ["empty or truncated file"])[0][:120]
        raise ValueError(f"{where}: expected the weights and settings written by training, got unreadable files "
                         f"({type(e).__name__}: {detail})") from None
    _check_files(path)
    return model, config


def _record(path: Path) -> dict:
    """The run's ``run.json`` (``{}`` for a run written before it existed)."""
    if not (path / MARKER).exists():
        return {}
    record = read_json(path / MARKER)
    if not (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("sha256", {}), dict)):
        raise ValueError(f"{path / MARKER}: expected the record written by the run, got an unreadable file")
    return record


def _check_files(path: Path) -> None:
    """Refuse a run whose config, data record or model files differ from those it wrote (``run.json``)."""
    recorded = _record(path).get("sha256", {})
    for name, sha in recorded.items():
        if name == "data":
            continue
        now = _file_digest(path / name) if (path / name).is_file() else None
        if now != sha:
            change = "missing" if now is None else f"changed since training (sha256 {now[:12]}..."
            raise ValueError(f"run: expected the files the run in {str(path)!r} wrote, got {name} {change}"
                             f"{', recorded ' if now else ' (recorded '}{str(sha)[:12]}...); "
                             f"train the run again rather than edit its files")


def run_status(path: str | os.PathLike) -> str:
    """``"finished"``, ``"interrupted"`` (stopped by Ctrl-C: the best weights so far) or ``"unfinished"``
    (still running, killed or failed)."""
    path = Path(path)
    if (path / "metrics.json").exists():
        return "finished"
    return "interrupted" if (path / "interrupted.json").exists() else "unfinished"


def _data_record(path: Path) -> dict | None:
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


def _check_data(path: Path, splits: datasets.Splits) -> None:
    """Refuse a data file whose bytes differ from those the run at ``path`` was trained on."""
    record = _data_record(path)
    if record is not None and splits.sha256 != record["sha256"]:
        raise ValueError(f"dataset: expected the file the run was trained on (sha256 {record['sha256'][:12]}...), "
                         f"got a changed file {splits.path!r} (sha256 {str(splits.sha256)[:12]}...)")


def evaluate_run(path: str | os.PathLike) -> dict[str, Any]:
    """Re-evaluate a run folder on its own splits; returns its metrics with fresh numbers.

    A run whose files changed since training is refused: its ``config.json`` or ``model/`` (their
    SHA-256 in ``run.json``), its data (the digest of the splits), or the data file's bytes.
    ``status`` says whether the run finished; an interrupted run's numbers are those of its best
    weights so far (``interrupted`` is true), not of a full run.
    """
    path = Path(path)
    model, config = load_run(path)
    status = run_status(path)
    metrics_file = path / ("metrics.json" if status == "finished" else "interrupted.json")
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except ValueError:
        metrics = {}  # the numbers are recomputed below
    metrics = metrics if isinstance(metrics, dict) else {}
    record = _data_record(path)
    if record is not None:  # the absolute path: evaluation works from any directory
        config = dataclasses.replace(config, dataset=record["path"])
    splits = load_data(config)
    _check_data(path, splits)
    sha = _record(path).get("sha256", {}).get("data")
    if sha is not None and sha != _splits_digest(splits):
        raise ValueError(f"run: expected the points the run in {str(path)!r} was trained and tested on "
                         f"(sha256 {sha[:12]}...), got other points from {config.dataset!r} with seed {config.seed} "
                         f"and n {config.n}")
    metrics.update({"dataset": config.dataset, "model": config.model, "seed": config.seed})
    metrics.update(evaluate(model, splits, config.top))
    metrics["parameters"] = parameters(model)
    metrics.update(status=status, interrupted=status != "finished")
    return metrics


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj)


def _write_history(out: Path, history: History) -> None:
    h = history.to_dict()
    _write_json(out / "history.json", h)
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "train_loss", "val_log_likelihood", "epoch_seconds"])
    for row in zip(h["epoch"], h["train_loss"], h["val_log_likelihood"], h["epoch_seconds"]):
        w.writerow(row)
    write_text(out / "history.csv", buf.getvalue())
