"""A scikit-learn density estimator: :class:`VQFlowDensity`, for pipelines, ``clone`` and grid search.

>>> from vqflows.sklearn import VQFlowDensity
>>> from vqflows import datasets
>>> X = datasets.load("helix", n=400).train.numpy()
>>> est = VQFlowDensity(charts=2, epochs=1, chart_epochs=1, transforms=1, hidden=8).fit(X)
>>> est.score_samples(X[:3]).shape
(3,)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from .checks import as_points
from .checks import seed as check_seed
from .config import check_repeats, default_patience, default_repeats, default_top
from .ensemble import VQFlowEnsemble
from .model import VQFlow
from .recipes import build
from .selection import CANDIDATES, REPEAT_SEED, partition_candidates, select_charts, stack_top, stacks
from .training import History, TrainConfig, check_threads, fit, torch_threads

#: the training defaults, which the estimator's training parameters take
_TRAIN = TrainConfig()


class VQFlowDensity(BaseEstimator):
    """A VQ-Flow as a scikit-learn density estimator, like :class:`sklearn.neighbors.KernelDensity`.

    Keyword arguments are the model's (see :func:`vqflows.build`) and :func:`vqflows.fit`'s, stored
    as given so that :func:`sklearn.base.clone`, ``get_params``/``set_params`` and ``GridSearchCV``
    work; the model is built and trained in :meth:`fit`. ``charts=None`` is the plain flow.

    The defaults are the command line's: with ``partition="auto"`` a MAF trains flows started from
    Gaussian mixtures of ``charts/4``, ``charts/2``, ``charts`` and ``2·charts`` components, two draws of each
    (``repeats``), and stacks them,
    with weights fitted on validation, into one :class:`~vqflows.ensemble.VQFlowEnsemble`
    (:func:`~vqflows.selection.partition_candidates`); other flows take the VQ-AE; ``partition="vqae"``
    is the paper's setting, ``"gmm"`` and ``"kmeans"`` fix the partition. ``charts="auto"`` chooses the
    count among :data:`~vqflows.selection.CANDIDATES` on validation (with ``partition="auto"``: they are the members).

    Arguments:
        flow, charts, partition, latent, m, eps, transforms, manifold_dim, frames, flow_options:
            the model (``partition`` also ``"auto"``, above) (``hidden`` units in each of the flow's two hidden layers).
        repeats: with ``partition="auto"``, members per mixture size, each drawn from its own seed (``None``: 2,
            eight members; 1 halves the cost; see :func:`~vqflows.selection.partition_candidates`).
        epochs, batch_size, lr, weight_decay, patience, chart_epochs, objective, top: training (the
            fields of :class:`~vqflows.training.TrainConfig` and its defaults; ``patience`` is early stopping's,
            ``None``: 10, and 5 for each member of the stacked default, :data:`vqflows.config.STACK_PATIENCE`;
            ``top``, ``None``: 4, and 2 for the stacked default's members on a curve, :data:`vqflows.config.CURVE_TOP`).
        validation_fraction: the share of ``X`` held out (seeded by ``seed``) for early stopping.
        seed: seeds the initial weights, the validation split and training.
        device: where to train; the fitted model is moved back to the CPU.
        threads: torch threads while fitting and scoring (``None`` or 0: leave torch's setting; at most
            :data:`~vqflows.training.THREADS_PER_CPU` per CPU).
        verbose: progress bars while fitting: ``True``, ``False``, or ``None`` (the default) for bars only
            when a person is watching (stderr is a terminal, or a notebook; :func:`vqflows.training.interactive`).

    Fitted attributes: ``model_`` (the :class:`VQFlow`, or the :class:`~vqflows.ensemble.VQFlowEnsemble`),
    ``history_`` (its :class:`History`),
    ``n_features_in_``.

    It passes every check of ``sklearn.utils.estimator_checks.check_estimator`` (scikit-learn 1.9)
    with small settings; :attr:`EXPECTED_FAILED_CHECKS` lists those it is known to fail, with why
    (none at present). ``check_array_api_input`` is skipped by scikit-learn itself unless
    ``SCIPY_ARRAY_API=1``: the model computes in torch, not through the array API.
    """

    #: ``check_estimator`` checks this estimator is known to fail, each with the reason.
    EXPECTED_FAILED_CHECKS: ClassVar[dict[str, str]] = {}

    def __init__(self, *, flow: str = "maf", charts: int | str | None = 32, partition: str = "auto", repeats: int | None = None,
                 latent: int = 3,
                 m: int = 1, eps: float = 0.0, transforms: int = 5, hidden: int = 64, manifold_dim: int = 2,
                 frames: bool = True, flow_options: dict | None = None, epochs: int = _TRAIN.epochs,
                 batch_size: int = _TRAIN.batch_size, lr: float = _TRAIN.lr, weight_decay: float = _TRAIN.weight_decay,
                 patience: int | None = None, chart_epochs: int = _TRAIN.chart_epochs,
                 objective: str = _TRAIN.objective, top: int | None = None, validation_fraction: float = 0.1,
                 seed: int = _TRAIN.seed, device: str = "cpu", threads: int | None = None,
                 verbose: bool | None = None) -> None:
        self.flow = flow
        self.charts = charts
        self.partition = partition
        self.repeats = repeats
        self.latent = latent
        self.m = m
        self.eps = eps
        self.transforms = transforms
        self.hidden = hidden
        self.manifold_dim = manifold_dim
        self.frames = frames
        self.flow_options = flow_options
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.chart_epochs = chart_epochs
        self.objective = objective
        self.top = top
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def fit(self, X, y=None) -> VQFlowDensity:
        """Build and train the model on ``X`` ``(N, D)``; ``y`` is ignored. Returns ``self``."""
        if isinstance(X, np.ma.MaskedArray) and np.ma.count_masked(X):
            as_points(X, name="X")  # raises: masked entries are refused, not read as values
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if not (isinstance(self.validation_fraction, float) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction: expected a float in (0, 1), got {self.validation_fraction!r}")
        check_threads(self.threads)  # checked here, not in __init__, as scikit-learn asks
        check_seed(self.seed)
        stacked = stacks(self.flow, self.partition)
        check_repeats(self.repeats, stacked, "partition='auto' with flow='maf'",
                      f"partition={self.partition!r}, flow={self.flow!r}")
        points = torch.from_numpy(np.array(X, dtype=np.float32))  # a copy: the caller's array stays untouched
        # Seeded split: the same estimator on the same data fits the same model (clone-and-refit safe).
        perm = torch.randperm(len(points), generator=torch.Generator().manual_seed(self.seed))
        cut = max(1, math.floor(self.validation_fraction * len(points)))
        val, train = points[perm[:cut]], points[perm[cut:]]
        config = TrainConfig.from_record({**self.get_params(deep=False),
                                          "patience": default_patience(self.patience, stacked), "top": default_top(self.top)})
        if stacked and self.top is None and self.charts is not None:  # two charts per point on curves
            config = config.replace(top=stack_top(train, self.charts, self.seed))
        with self._threads():
            fixed = "vqae" if self.partition == "auto" else self.partition
            model = self._build(X.shape[1], min(CANDIDATES) if self.charts == "auto" else self.charts, fixed)
            model.check_training_data(points, name="X")  # the data's faults named before any fitting
            candidates = None if self.charts is None else partition_candidates(self.flow, self.partition, self.charts,
                                                                               default_repeats(self.repeats, stacked))
            if candidates is None:
                history = fit(model, train, val, config=config, progress=self.verbose)
            else:
                model, history, _ = select_charts(lambda k, partition, r=0: self._build(X.shape[1], k, partition, r), train, val,
                                                  candidates=candidates, config=config, progress=self.verbose,
                                                  stack=stacked)
        if history.interrupted:
            raise KeyboardInterrupt
        self.model_: VQFlow | VQFlowEnsemble = model.to("cpu").eval()
        self.history_: History = history
        return self

    def score_samples(self, X) -> np.ndarray:
        """The log-density ``log p(x)`` of each row of ``X`` ``(N, D)`` -> ``(N,)`` float64 (nats)."""
        check_is_fitted(self, "model_")
        if isinstance(X, np.ma.MaskedArray) and np.ma.count_masked(X):
            as_points(X, name="X")  # raises: masked entries are refused, not read as values
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        points = torch.from_numpy(np.array(X, dtype=np.float64)).to(next(self.model_.parameters()).dtype)
        with self._threads(), torch.no_grad():
            return self.model_.log_prob(points).double().numpy()

    def score(self, X, y=None) -> float:
        """The mean log-likelihood of ``X`` ``(N, D)`` (nats per point): higher is better, as GridSearchCV wants."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """Draw ``n_samples`` points ``(n_samples, D)`` from the fitted density.

        ``random_state``: ``None``, an int or a ``numpy.random.RandomState``; it seeds the draw.
        """
        check_is_fitted(self, "model_")
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        with self._threads(), torch.no_grad():
            return self.model_.sample(n_samples, seed=seed).double().numpy()

    def _build(self, features: int, charts: int | None, partition: str, repeat: int = 0) -> VQFlow:
        torch.manual_seed(self.seed + REPEAT_SEED * repeat)
        return build(features, self.flow, charts, partition=partition, latent=self.latent, m=self.m, eps=self.eps,
                     transforms=self.transforms, hidden_features=(self.hidden, self.hidden),
                     manifold_dim=self.manifold_dim, frames=self.frames, flow_options=self.flow_options)

    def _threads(self):
        """:func:`vqflows.training.torch_threads`: checked (0 and ``None`` leave torch's setting), restored after."""
        return torch_threads(self.threads)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        return tags
