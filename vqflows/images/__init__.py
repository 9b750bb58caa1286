"""Images for VQ-Flows: integer-level datasets, dequantisation, classifier FID and conv encoders.

- :mod:`~vqflows.images.data`: :func:`load_images` (8×8 digits offline, MNIST from IDX files).
- :mod:`~vqflows.images.dequantize`: uniform dequantisation + logit, :func:`bits_per_dim`.
- :mod:`~vqflows.images.fid`: :func:`frechet_distance` and :class:`ClassifierFID`.
- :mod:`~vqflows.images.encoders`: :class:`ConvEncoder` / :class:`ConvDecoder` for a VQ autoencoder.
"""

from __future__ import annotations

from .data import DATASETS, ImageSplits, load_images, read_idx, write_idx
from .dequantize import LogitDequantization, bits_per_dim
from .encoders import ConvDecoder, ConvEncoder
from .fid import (
    ClassifierFID,
    ImageClassifier,
    default_classifier_path,
    feature_stats,
    frechet_distance,
    inception_backend,
    inception_fid,
)

__all__ = [
    "DATASETS",
    "ImageSplits",
    "load_images",
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
]
