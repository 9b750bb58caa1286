r"""The image study (paper §5.3, Figure 5): RealNVP and MAF with and without VQ charts, FID over training.

Each run trains one model on dequantised, logit-transformed training images — a fresh draw of the
dequantisation noise every epoch (:class:`~vqflows.images.LogitDequantization`) — and every
``eval_every`` epochs records

- the classifier FID (:class:`~vqflows.images.ClassifierFID`) of ``min(test size, fid_samples)``
  samples, mapped back to integer levels by the dequantiser's inverse, against the test images;
- the test bits/dim, ``−(log p_y(y) + log|∂y/∂x| − D log L) / (D log 2)`` averaged over the test
  images under one fixed draw of the noise (the same for every run), with ``log p_y`` the exact
  mixture density over all K charts.

A base flow and its VQ version share every setting of :class:`StudyConfig` except ``charts``. Runs
are written one JSON file each (``runs/<model>-trial<t>.json``, the curve, with the final samples
beside it as ``.npy``); a rerun skips finished runs. :mod:`~vqflows.images.report` turns the runs into
the summary table, the figure and the sample grids; :mod:`vqflows.experiments.images` runs the study
(its runs on the shared job runner) and holds its command line (``vqflows benchmark --images``)::

    vqflows benchmark --images digits --jobs 2 --out image-study/digits

takes about 6 minutes on two shared CPU cores (12 runs of 800 steps) and gave final FIDs of
11.8 ± 0.7 (RealNVP), 7.5 ± 1.6 (VQ-RealNVP), 8.9 ± 1.1 (MAF), 6.6 ± 0.6 (VQ-MAF), against 4.75 for
real held-out images (classifier features; comparable only between runs sharing the classifier).
MNIST needs a GPU: ``--images mnist --data-dir DIR --device cuda --jobs 3 --threads 4``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checks import one_of, positive_int
from ..io import apply_overrides, save_numpy, write_json
from ..training import History, TrainConfig, cosine, train_flow
from ..training.fitting import fit_chart_weights, fit_partition
from .data import DATASETS, ImageSplits
from .dequantize import LogitDequantization, bits_per_dim
from .fid import ClassifierFID, default_classifier_path
from .inception import InceptionFID
from .models import ENCODERS, IMAGE_MODELS, ImageArchitecture, ImageFlowConfig, build_image_flow

__all__ = ["StudyConfig", "evaluate_image_model", "run_path", "train_image_run"]

#: Learning-rate schedules.
SCHEDULES = ("cosine", "constant")

#: Seed of the one dequantisation draw of the test images that every run is scored on.
TEST_NOISE_SEED = 20_240_501


@dataclass
class StudyConfig(ImageArchitecture):
    """Every setting of the image study; a base flow and its VQ version differ only in ``charts``.

    The class defaults are the digits study's (:meth:`defaults` gives MNIST's), chosen on digits with
    3 trials per model: 80 epochs of 10 steps (batch 128) with Adam at ``lr = 10⁻³`` annealed by a
    cosine (a constant rate left the final FID wandering by ±2 between evaluations; 40 epochs gave
    the same ordering of the four models with bits/dim 0.02–0.06 higher); 5 transforms
    with two 256-wide conditioner layers; ``K = 16`` charts (about 80 training images each) with an
    8-D code from a convolutional VQ autoencoder; one global whitening frame. Per-chart frames
    (``frames=True``) whiten each chart from ~80 points in 64 dimensions and overfit: test bits/dim
    2.57 (VQ-RealNVP) and 2.71 (VQ-MAF) against 2.20 and 2.23 with the global frame.

    Attributes:
        dataset: ``"digits"`` or ``"mnist"``.
        epochs: training epochs (no early stopping: the curve is the object of study).
        eval_every: epochs between evaluations (the last epoch is always evaluated).
        batch_size, lr: Adam on ``−log p(y | k)``.
        charts: ``K`` of the VQ models.
        latent: code dimension ``C`` of the VQ autoencoder.
        transforms, hidden: flow layers and conditioner widths.
        frames: one PCA-whitening frame per chart (``True``) or one global frame (``False``).
        encoder, vq_channels, vq_hidden: the VQ autoencoder (see :class:`ImageFlowConfig`).
        chart_epochs: VQ autoencoder epochs.
        alpha: logit margin ``α`` of the dequantiser.
        fid_samples: cap on the number of generated images per FID (the test size otherwise).
        schedule: learning rate over training, ``"cosine"`` (annealed to 0 by the last epoch, so the
            final model is not caught mid-oscillation) or ``"constant"``.
        clip: gradient-norm clip (``0`` for none).
        seed: the seed of trial 0; trial ``t`` uses ``seed + t``.
        data_seed: seed of the train / validation split (the same for every run).
        inception: also score the final samples by the Inception FID (:class:`~vqflows.images.InceptionFID`,
            2048-D pool features of the checked TorchScript Inception-v3) against the test images.
    """

    dataset: str = "digits"
    epochs: int = 80
    eval_every: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    charts: int = 16
    chart_epochs: int = 30
    alpha: float = 1e-6
    fid_samples: int = 2000
    schedule: str = "cosine"
    clip: float = 0.0
    seed: int = 0
    data_seed: int = 0
    inception: bool = False

    def __post_init__(self) -> None:
        one_of(self.dataset, DATASETS, name="dataset")
        for name in ("epochs", "eval_every", "batch_size", "charts", "latent", "transforms", "chart_epochs",
                     "fid_samples"):
            positive_int(getattr(self, name), name=name)
        for name in ("seed", "data_seed"):
            positive_int(getattr(self, name), name=name, minimum=0)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not self.clip >= 0:
            raise ValueError(f"clip: expected a number >= 0, got {self.clip!r}")
        one_of(self.encoder, ENCODERS, name="encoder")
        one_of(self.schedule, SCHEDULES, name="schedule")
        for name in ("hidden", "vq_channels", "vq_hidden"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, int)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name}: expected a list of widths, got {value!r}")
            setattr(self, name, tuple(positive_int(v, name=name) for v in value))
        if not isinstance(self.frames, bool):
            raise ValueError(f"frames: expected true or false, got {self.frames!r}")  # noqa: TRY004
        self.flow_config("vq-maf")  # checks the architecture once

    @classmethod
    def defaults(cls, dataset: str = "digits", *, subset: bool = False) -> StudyConfig:
        """The documented defaults for ``dataset``.

        - digits (CPU, 1,257 training images of 8×8): the class defaults.
        - MNIST (GPU, 50,000 of 28×28): conditioners of two 1024-wide layers, ``K = 32`` charts with
          a 16-D code, 30 epochs of 391 steps, evaluated every epoch (FID from 2,000 samples), and
          the final Inception FID.
        - MNIST's 5,000-image subset (``subset=True``; CPU, 4,000 training images): the digits
          architecture (two 256-wide layers, ``K = 16``, 8-D code), 30 epochs of 32 steps, the
          classifier-FID curve every 10 epochs from 500 samples, and the final Inception FID of 500
          samples against the 500 test images — sized so that the 12 runs fit in an hour on two CPU
          cores (sampling a 784-D MAF, one pixel at a time, is most of the cost).
        """
        one_of(dataset, DATASETS, name="dataset")
        if dataset == "digits":
            return cls()
        if subset:
            return cls(dataset="mnist", epochs=30, eval_every=10, fid_samples=500, inception=True)
        return cls(dataset="mnist", epochs=30, eval_every=1, charts=32, latent=16, hidden=(1024, 1024),
                   vq_channels=(32, 64), vq_hidden=(256,), chart_epochs=20, inception=True)

    def with_overrides(self, overrides: dict[str, Any] | Sequence[str]) -> StudyConfig:
        """A copy with ``key=value`` overrides (:func:`vqflows.io.apply_overrides`; lists as ``a,b``)."""
        return apply_overrides(self, overrides)

    def flow_config(self, model: str) -> ImageFlowConfig:
        """The architecture of ``model`` (one of :data:`IMAGE_MODELS`)."""
        one_of(model, IMAGE_MODELS, name="model")
        return ImageFlowConfig(flow=model.removeprefix("vq-"), charts=self.charts if model.startswith("vq-") else None,
                               **self.architecture())

    def training(self, seed: int) -> TrainConfig:
        """The flow's training settings for the trial seeded ``seed``: Adam with the schedule, no early
        stopping (the curve is the object of study), each image in its chart (the paper's eq. 17)."""
        return TrainConfig.from_record(dataclasses.asdict(self), seed=seed, early_stopping=None, objective="cells",
                                       scheduler=cosine if self.schedule == "cosine" else None,
                                       clip_grad=self.clip or None)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# -- one run ------------------------------------------------------------------------------------------


def run_path(out: str | os.PathLike, model: str, trial: int) -> Path:
    """The curve file of ``model``'s trial ``trial`` under the study folder ``out``."""
    return Path(out) / "runs" / f"{model}-trial{trial}.json"


@torch.no_grad()
def evaluate_image_model(model, splits: ImageSplits, dequantizer: LogitDequantization, fid: ClassifierFID, *,
                         test_y: torch.Tensor, test_logdet: torch.Tensor, reference, samples: int, seed: int,
                         rows: int = 16384) -> dict[str, Any]:
    """FID of ``samples`` generated images and test bits/dim of ``model``.

    Arguments:
        model: a :class:`~vqflows.VQFlow` on the logit-space images.
        splits: the dataset (for ``D`` and ``L``).
        dequantizer: maps samples back to levels (:meth:`LogitDequantization.inverse`).
        fid: the FID feature network.
        test_y, test_logdet: the dequantised test images ``(N, D)`` and their ``log|∂y/∂x|`` ``(N,)``.
        reference: ``(μ, Σ)`` of the test images' features (:meth:`ClassifierFID.stats`).
        samples: number of generated images.
        seed: seed of the sampler.
        rows: flow rows per pass when scoring all K charts (bounds memory; a batch holds ``rows / K`` images).

    Returns:
        ``{"fid", "bits_per_dim", "nonfinite_samples", "levels"}`` with the sampled levels ``(samples, D)`` uint8.
    """
    model.eval()
    device = model.log_weights.device
    per_batch = max(1, rows // model.K)
    log_p = torch.cat([model.log_prob(b.to(device), chunk=rows).double().cpu()
                       for b in test_y.split(per_batch)])
    bpd = float(bits_per_dim(log_p, test_logdet.double(), splits.features, splits.levels).mean())
    y = model.sample(samples, seed=seed).cpu()
    bad = ~torch.isfinite(y).all(dim=1)
    # ±inf saturate to the extreme levels in the inverse; NaN (an overflowed inverse) is set to the middle
    levels = dequantizer.inverse(torch.nan_to_num(y, nan=0.0))
    score = fid.score(levels, reference)
    return {"fid": score, "bits_per_dim": bpd, "nonfinite_samples": int(bad.sum()),
            "levels": levels.to(torch.uint8).numpy()}


class _Curve:
    """The callback of one image run: FID and bits/dim before training and every ``eval_every`` epochs
    (and at the last) into ``record["curve"]``, the record written to ``path`` after each evaluation."""

    def __init__(self, model, splits: ImageSplits, dequantizer: LogitDequantization, fid: ClassifierFID,
                 config: StudyConfig, *, seed: int, path: Path | None, log: Callable[[str], None] | None,
                 name: str) -> None:
        self.model, self.splits, self.dequantizer, self.fid, self.config = model, splits, dequantizer, fid, config
        self.path, self.log, self.name = path, log, name
        self.test_y, self.test_logdet = dequantizer(splits.test, torch.Generator().manual_seed(TEST_NOISE_SEED))
        self.reference = fid.stats(splits.test)
        self.samples = min(len(splits.test), config.fid_samples)
        # the same latent draws at every evaluation, so that the curve shows the model changing, not the draws
        self.sample_seed = 1_000_003 * (seed + 1)
        self.per_epoch = math.ceil(splits.train.shape[0] / config.batch_size)
        self.record: dict[str, Any] = {}
        self.last: dict[str, Any] | None = None

    def seconds(self, history: History) -> float:
        return self.record["chart_seconds"] + sum(history.epoch_seconds)

    def evaluate(self, epoch: int, history: History) -> None:
        result = evaluate_image_model(self.model, self.splits, self.dequantizer, self.fid, test_y=self.test_y,
                                      test_logdet=self.test_logdet, reference=self.reference,
                                      samples=self.samples, seed=self.sample_seed)
        self.last = result
        curve = self.record["curve"]
        train_loss = history.train_loss[-1] if history.train_loss else math.nan
        for key, value in (("epoch", epoch), ("iteration", epoch * self.per_epoch), ("fid", result["fid"]),
                           ("bits_per_dim", result["bits_per_dim"]), ("train_loss", train_loss),
                           ("seconds", self.seconds(history)), ("nonfinite_samples", result["nonfinite_samples"])):
            curve[key].append(value)
        if self.log is not None:
            self.log(f"{self.name}: epoch {epoch:3d}  FID {result['fid']:8.2f}  "
                     f"bits/dim {result['bits_per_dim']:.4f}  ({self.seconds(history):.0f} s)")
        if self.path is not None:
            write_json(self.path, self.record, indent=1)

    def on_train_begin(self, model, history: History) -> None:
        self.evaluate(0, history)

    def __call__(self, epoch: int, model, history: History) -> None:
        if epoch % self.config.eval_every == 0 or epoch == self.config.epochs:
            self.evaluate(epoch, history)

    def finish(self, history: History, device: torch.device) -> dict[str, Any]:
        """The finished record: the final values (with the Inception FID if asked), the samples saved."""
        record, last = self.record, self.last
        record["finished"] = True
        record["train_seconds"] = sum(history.epoch_seconds)
        record["final"] = {k: record["curve"][k][-1] for k in ("epoch", "iteration", "fid", "bits_per_dim")}
        if self.config.inception:
            t1 = time.perf_counter()
            inception = inception_fid(self.splits, device)
            record["final"]["inception_fid"] = inception.score(last["levels"],
                                                               inception_reference(inception, self.splits))
            record["inception_seconds"] = time.perf_counter() - t1
        if self.path is not None:
            samples_file = self.path.with_name(self.path.stem + "-samples.npy")
            save_numpy(samples_file, last["levels"])
            record["samples"] = samples_file.name
            write_json(self.path, record, indent=1)
        return record


def train_image_run(model_name: str, trial: int, config: StudyConfig, splits: ImageSplits, fid: ClassifierFID, *,
                    device: str | torch.device = "cpu", path: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``model_name`` for trial ``trial`` and return its record (the curve and final values).

    With ``path``, the record is written there after every evaluation (``"finished": false`` until
    the end) and the final samples beside it as ``<name>-samples.npy``.

    The record: ``{"model", "trial", "seed", "config", "parameters", "finished", "curve": {"epoch",
    "iteration", "fid", "bits_per_dim", "train_loss", "seconds", "nonfinite_samples"}, "final": {...},
    "chart_seconds", "train_seconds", "device"}``.
    """
    one_of(model_name, IMAGE_MODELS, name="model")
    trial = positive_int(trial, name="trial", minimum=0)
    if not isinstance(config, StudyConfig):
        raise ValueError(f"config: expected a StudyConfig, got {type(config).__name__}")  # noqa: TRY004
    if splits.name != config.dataset:
        raise ValueError(f"splits: expected the {config.dataset!r} images of the config, got {splits.name!r}")
    device = torch.device(device)
    seed = config.seed + trial
    torch.manual_seed(seed)
    model = build_image_flow(config.flow_config(model_name), splits.shape).to(device)
    dequantizer = LogitDequantization(splits.levels, alpha=config.alpha)
    noise = torch.Generator().manual_seed(seed)
    curve = _Curve(model, splits, dequantizer, fid, config, seed=seed, path=Path(path) if path is not None else None,
                   log=log, name=f"{model_name} trial {trial}")

    t0 = time.perf_counter()
    y = dequantizer(splits.train, noise)[0].to(device)
    fit_partition(model, y, seed=seed, epochs=config.chart_epochs)
    fit_chart_weights(model, y)
    curve.record = {
        "model": model_name, "trial": trial, "seed": seed, "dataset": config.dataset, "config": config.to_dict(),
        "flow_config": config.flow_config(model_name).to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()), "finished": False, "device": str(device),
        "chart_seconds": time.perf_counter() - t0,
        "curve": {k: [] for k in ("epoch", "iteration", "fid", "bits_per_dim", "train_loss", "seconds",
                                  "nonfinite_samples")},
    }

    def data(epoch: int) -> torch.Tensor:
        # a fresh draw of the dequantisation noise each epoch; epoch 1 reuses the charts' draw
        return y if epoch == 1 else dequantizer(splits.train, noise)[0].to(device)

    history = train_flow(model, data, None, config=config.training(seed), callbacks=[curve])
    if history.interrupted:
        raise KeyboardInterrupt
    return curve.finish(history, device)


@functools.lru_cache(maxsize=2)
def _inception(shape: tuple[int, int], levels: int, device: str):
    return InceptionFID(shape=shape, levels=levels, device=device)


def inception_fid(splits: ImageSplits, device: str | torch.device = "cpu"):
    """The Inception FID network for ``splits``' images, loaded once per process."""
    return _inception(tuple(splits.shape), splits.levels, str(device))


def inception_reference(inception, splits: ImageSplits):
    """Inception statistics of the test images, cached in ``$VQFLOWS_CACHE/fid`` (computed once, then shared)."""
    return inception.reference_stats(splits.test, cache_dir=default_classifier_path("x").parent,
                                     dataset=splits.tag, split="test")
