"""Run folders: one trained model with its resolved config, weights, metrics and training curve.

A run folder holds ``config.json`` (the resolved :class:`RunConfig`), ``model/`` (see
:meth:`VQFlow.save`), ``metrics.json`` and ``history.json``/``history.csv``. Files are written
atomically; a folder without ``metrics.json`` is unfinished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import datasets
from .checks import one_of, override_pairs
from .model import VQFlow, build
from .training import History, fit

#: Model names: base flows and their VQ versions.
MODELS = ("realnvp", "vq-realnvp", "maf", "vq-maf", "nsf", "vq-nsf", "cef", "vq-cef", "sphere", "vq-sphere")


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults are the library's documented choices."""

    dataset: str = "helix"
    model: str = "vq-maf"
    seed: int = 0
    n: int = 10_000
    epochs: int = 100
    patience: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    charts: int = 32
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
    device: str = "cpu"
    threads: int = 1  # small flows are bound by per-operation overhead: one thread is as fast and never oversubscribes

    def __post_init__(self) -> None:
        one_of(self.model, MODELS, name="model")
        if self.m is None:
            # an embedding flow's chart surface must reach past its cell to meet its neighbours'
            self.m = 2 if self.model == "vq-cef" else 1

    @property
    def flow(self) -> str:
        return self.model.removeprefix("vq-")

    @property
    def is_vq(self) -> bool:
        return self.model.startswith("vq-")

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "RunConfig":
        """A copy with ``key=value`` overrides; unknown keys and values of the wrong type raise ``ValueError``."""
        out = {key: _coerce(key, value, float if key in _FLOATS else type(getattr(self, key)))
               for key, value in override_pairs(self, overrides).items()}
        return dataclasses.replace(self, **out)

    def build_model(self, features: int) -> VQFlow:
        return build(features, self.flow, self.charts if self.is_vq else None, partition=self.partition,
                      latent=self.latent, m=self.m, eps=self.eps, transforms=self.transforms,
                      hidden_features=(self.hidden, self.hidden), manifold_dim=self.manifold_dim,
                      frames=self.frames, flow_options=self.flow_options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FLOATS = ("lr", "eps")


def _coerce(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, str) and kind is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def load_data(config: RunConfig) -> datasets.Splits:
    """The run's splits (built-in name, or a path to a user's ``.npy``/``.csv``)."""
    return datasets.load(config.dataset, n=config.n, seed=config.seed)


@torch.no_grad()
def evaluate(model: VQFlow, splits: datasets.Splits) -> dict[str, float]:
    """Test/validation log-likelihoods (mean nats per point), oracle and reconstruction error."""
    out = {
        "test_log_likelihood": float(model.log_prob(splits.test, "mixture").mean()),
        "test_log_likelihood_charts": float(model.log_prob(splits.test, "charts").clamp_min(-1e30).mean()),
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


def parameters(model: nn_module) -> int:  # type: ignore[name-defined]
    return sum(p.numel() for p in model.parameters())


nn_module = torch.nn.Module


def train_run(config: RunConfig, out: str | os.PathLike, *, progress: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Train the run ``config`` into the folder ``out`` and return its metrics.

    An existing finished run folder is refused unless ``overwrite``; on Ctrl-C the best weights so
    far are saved with ``"interrupted": true`` in the metrics, then ``KeyboardInterrupt`` is re-raised.
    """
    out = Path(out)
    if (out / "metrics.json").exists() and not overwrite:
        raise ValueError(f"out: expected a new or unfinished run folder, got the finished run {str(out)!r} "
                         f"(use overwrite to replace it)")
    if config.threads:
        torch.set_num_threads(config.threads)
    splits = load_data(config)
    torch.manual_seed(config.seed)  # the initial weights belong to the run, not to the process's history
    model = config.build_model(splits.train.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config.to_dict())
    history = fit(model, splits.train, splits.val, epochs=config.epochs, batch_size=config.batch_size,
                  lr=config.lr, patience=config.patience, chart_epochs=config.chart_epochs,
                  seed=config.seed, device=config.device, progress=progress)
    model.to("cpu")
    metrics = {"dataset": config.dataset, "model": config.model, "seed": config.seed}
    if not history.interrupted:
        metrics.update(evaluate(model, splits))
    metrics.update(epochs=history.epochs, best_epoch=history.best_epoch, train_seconds=history.train_seconds,
                   chart_seconds=history.chart_seconds, flow_seconds_per_epoch=(
                       history.flow_seconds / max(history.epochs, 1)),
                   parameters=parameters(model), stopped_early=history.stopped_early,
                   interrupted=history.interrupted)
    model.save(out / "model")
    _write_history(out, history)
    _write_json(out / ("interrupted.json" if history.interrupted else "metrics.json"), metrics)
    if history.interrupted:
        raise KeyboardInterrupt
    return metrics


def load_run(path: str | os.PathLike) -> tuple[VQFlow, RunConfig]:
    """The model and config of a run folder."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"run: expected a run folder with config.json, got {str(path)!r}")
    config = RunConfig(**json.loads((path / "config.json").read_text()))
    return VQFlow.load(path / "model"), config


def evaluate_run(path: str | os.PathLike) -> dict[str, Any]:
    """Re-evaluate a run folder on its own splits; returns its metrics with fresh numbers."""
    model, config = load_run(path)
    metrics = json.loads((Path(path) / "metrics.json").read_text()) if (Path(path) / "metrics.json").exists() else {}
    metrics.update({"dataset": config.dataset, "model": config.model, "seed": config.seed})
    metrics.update(evaluate(model, load_data(config)))
    metrics["parameters"] = parameters(model)
    return metrics


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)


def _write_history(out: Path, history: History) -> None:
    h = history.to_dict()
    _write_json(out / "history.json", h)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "train_loss", "val_log_likelihood", "epoch_seconds"])
    for row in zip(h["epoch"], h["train_loss"], h["val_log_likelihood"], h["epoch_seconds"]):
        w.writerow(row)
    tmp = out / "history.csv.tmp"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, out / "history.csv")
