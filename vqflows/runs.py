"""Run folders: one trained model with its resolved config, weights, metrics and training curve.

A run folder holds ``config.json`` (the resolved :class:`RunConfig`), ``model/`` (see
:meth:`VQFlow.save`), ``metrics.json`` and ``history.json``/``history.csv``; a run on a file also
holds ``data.json`` (the file's absolute path and SHA-256). Files are written atomically; a
folder without ``metrics.json`` is unfinished, and ``interrupted.json`` marks one stopped by Ctrl-C.

While a run writes, its folder holds ``.lock`` (created exclusively, holding the writer's pid and
host), so a second writer is refused instead of silently mixing two runs. Nothing a finished or
interrupted run made is replaced unless asked (``overwrite``, or ``resume`` for an interrupted run).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
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
from .checks import one_of, positive_int, spread
from .io import apply_overrides, claim, write_json, write_text
from .model import VQFlow
from .selection import CANDIDATES, select_charts
from .training import MEMBERSHIPS, OBJECTIVES, History, fit

#: Model names: the presets of base flows and their VQ versions (:mod:`vqflows.presets`; the image presets
#: belong to the image study).
MODELS = tuple(name for name in presets.names() if not name.startswith("image-"))

#: Files a run writes into its folder (besides ``model/``); ``overwrite`` removes exactly these.
RUN_FILES = ("config.json", "data.json", "metrics.json", "interrupted.json", "history.json", "history.csv",
             "checkpoint.pt")
LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"


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
    claimed with ``.lock`` (a second writer gets ``ValueError``). A finished run is replaced only
    with ``overwrite``; an unfinished one (e.g. stopped by Ctrl-C) only with ``overwrite`` or
    ``resume``. With ``resume`` the saved settings must match ``config`` (device and threads aside)
    and the data file must be unchanged; training goes on from ``checkpoint.pt`` (written after every
    epoch) where :func:`fit` supports checkpoints, and starts over otherwise.

    On Ctrl-C the best weights so far (if a flow epoch finished) are saved with
    ``interrupted.json``, then :class:`RunInterrupted` says what the folder kept. A run that fails
    on a fresh folder removes what it wrote. ``callback(epoch, model, history)`` is passed to :func:`fit`.
    """
    out = Path(out)
    if overwrite and resume:
        raise ValueError("resume: expected either resume or overwrite, got both")
    if config.threads:
        torch.set_num_threads(config.threads)
    config, rank = _join_process_group(config)
    splits = load_data(config)
    spread(splits.train, name=config.dataset, every_column=config.flow != "cef")
    torch.manual_seed(config.seed)  # the initial weights belong to the run, not to the process's history
    model = config.build_model(splits.train.shape[1])
    if rank:  # another rank of a data-parallel run: train beside rank 0, which alone writes the folder
        _fit(config, model, splits, progress=False, callback=callback, checkpoint=out / CHECKPOINT if resume else None)
        return {}

    with _claim(out):
        state = _state(out)
        if state == "finished" and not overwrite:
            raise ValueError(f"out: expected a new or unfinished run folder, got the finished run {str(out)!r} "
                             f"(use overwrite to replace it)")
        if state == "unfinished" and not (overwrite or resume):
            raise ValueError(f"out: expected a new run folder, got the unfinished run {str(out)!r} "
                             f"(use resume to continue it or overwrite to start over)")
        if state == "unfinished" and resume:
            _check_resumable(out, config, splits)
        if overwrite:
            _clear(out)
        fresh = state == "new" or overwrite
        _write_json(out / "config.json", config.to_dict())
        if splits.path is not None:
            _write_json(out / "data.json", {"path": splits.path, "sha256": splits.sha256,
                                            "rows": sum(len(t) for t in (splits.train, splits.val, splits.test)),
                                            "features": splits.features})
        extra = {"checkpoint": out / CHECKPOINT}
        history = None
        try:
            model, history, selection = _fit(config, model, splits, progress=progress, callback=callback, **extra)
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
                raise KeyboardInterrupt
            _write_json(out / "metrics.json", metrics)
            for name in ("interrupted.json", CHECKPOINT):  # a finished run has nothing left to resume
                (out / name).unlink(missing_ok=True)
        except KeyboardInterrupt:
            raise RunInterrupted(_kept(out, history)) from None
        except BaseException:
            if fresh:
                _clear(out)
            raise
    return metrics


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
    """``"finished"``, ``"unfinished"`` (a run began writing here) or ``"new"``."""
    if (out / "metrics.json").exists():
        return "finished"
    if any((out / name).exists() for name in RUN_FILES) or (out / "model").exists():
        return "unfinished"
    return "new"


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
    return model, config


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

    A run on a file is refused if the file's bytes changed since training (SHA-256).
    """
    path = Path(path)
    model, config = load_run(path)
    metrics_file = path / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except ValueError:
        metrics = {}  # the numbers are recomputed below
    record = _data_record(path)
    if record is not None:  # the absolute path: evaluation works from any directory
        config = dataclasses.replace(config, dataset=record["path"])
    splits = load_data(config)
    _check_data(path, splits)
    metrics.update({"dataset": config.dataset, "model": config.model, "seed": config.seed})
    metrics.update(evaluate(model, splits, config.top))
    metrics["parameters"] = parameters(model)
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
