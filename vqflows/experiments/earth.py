r"""Earth-science densities on the sphere S²: VQ-flows against the published table.

Four sets of real events (volcanic eruptions, earthquakes, floods, fires; :mod:`vqflows.datasets.earth`)
under the standard protocol: a random 80/10/10 split, a new one per seed, and the test NLL in nats,

.. math:: \mathrm{NLL} = -\frac{1}{N} \sum_{i=1}^{N} \log p(x_i),

with ``p`` a density w.r.t. the area measure of the unit sphere (uniform: ``ln 4π ≈ 2.531``), as mean
± standard deviation (``ddof=1``) over the seeds. The models, one table row each:

* ``vq-sphere`` / ``sphere``: VQ-Flow with ``flow="sphere"``, K charts (or one), each a conditional
  RealNVP carried onto the FIXED unit sphere by the stereographic projection from the antipode of the
  chart's mean direction. An exact, normalised density w.r.t. the sphere's area: directly comparable
  with the published rows.
* ``vq-cef`` / ``cef``: VQ-Flow with ``flow="cef"``, a LEARNED 2-D surface per chart. Its density is
  w.r.t. the area of the learned surface, so its NLL is comparable only insofar as that surface is the
  unit sphere; the mean squared distance from the test points to it is reported beside it.
* ``vmf``: a von Mises–Fisher mixture fitted by EM, its number of components chosen on validation
  (:func:`vqflows.vmf.fit_vmf_mixture`): the classical anchor.
* ``vmf-kde``: a vMF kernel at every training point, one concentration from
  :data:`~vqflows.vmf_kde.KDE_KAPPAS` and a uniform-floor weight from :data:`~vqflows.vmf_kde.KDE_FLOORS`, both
  chosen on validation (:func:`vqflows.vmf_kde.fit_vmf_kde`). Its floor is part of its fit, so it has no
  ``+floor`` row.

``vq-sphere`` starts, by default (``init="kernels"``), from the kernel density it generalises
(:func:`vqflows.kernel_flow.fit_kernel_flow`): one chart per training point, each an exact vMF chart
(:class:`~vqflows.flows.sphere.VMFChartFlow`) with its own concentration, a fixed or adaptive kernel
density chosen on validation among ``kernel_alphas``, and a shared flow started at the identity and
trained leave-one-out; it is never below that kernel density on validation. ``init="kmeans"`` is the
earlier model: k-means charts with stereographic RealNVPs trained from a random start.

Every hyperparameter of a row is shared by the four datasets (:func:`default_configs`); the only
data-dependent choices are the number of charts (``K = round(N_train / points_per_chart)`` within
``[min_charts, max_charts]`` for ``init="kmeans"``, the training points for ``init="kernels"``) and
what is chosen on validation.

Layout of ``--out``: ``runs/<dataset>/<model>/seed-<s>/`` (``result.json`` with the numbers and the
resolved config, and the fitted model), ``table.md``, ``table.csv``, ``table.json``, ``summary.md`` and
``figures/<dataset>.png|pdf`` (written by :mod:`.earth_report`). A rerun skips the runs whose ``result.json``
holds the same config. The runs go to the shared job runner (:mod:`.runner`: ``--jobs``, ``--scheduler``); the
command line, ``vqflows benchmark --earth``, is :mod:`.earth_cli`.

Letters: N points, K charts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checks import one_of, positive_int
from ..datasets.earth import EarthSplits, earth_path, load_earth, read_latlon
from ..io import apply_overrides, read_json, save_torch, write_json
from ..kernel_flow import fit_kernel_flow, kernel_vqflow
from ..model import VQFlow
from ..recipes import build
from ..training import TrainConfig, fit
from ..vmf import VMFMixture, fit_vmf_mixture
from ..vmf_kde import KDE_FLOORS, KDE_KAPPAS, fit_vmf_kde
from .runner import Report, Runner, Task

#: Table rows of this package, in display order, and what their density is taken w.r.t.
MODELS = {
    "vmf": "unit sphere",
    "vmf-kde": "unit sphere",
    "sphere": "unit sphere",
    "vq-sphere": "unit sphere",
    "cef": "learned surface",
    "vq-cef": "learned surface",
}

#: Display names of the datasets (the published table's columns).
TRAIN_EVAL = 2048

#: Weights ``w`` of the uniform density tried in the ``+floor`` rows, ``(1 - w) p + w / 4π``, chosen on
#: validation per run (``0`` included, so a floor is used only when validation asks for one).
FLOOR_WEIGHTS = (0.0, 1e-3, 1e-2, 3e-2, 5e-2, 0.1)

#: Rows whose uniform floor is chosen with the rest of their fit (no separate ``+floor`` row).
OWN_FLOOR = ("vmf-kde",)


@dataclass(frozen=True)
class EarthConfig:
    """Hyperparameters shared by every dataset and seed (chosen on validation NLL only).

    Attributes:
        points_per_chart: training points per chart; ``K = round(N_train / points_per_chart)``.
        min_charts, max_charts: bounds on ``K``.
        partition: ``"kmeans"`` or ``"vqae"`` charts.
        m, eps: chart membership (``m=1, eps=0``: hard charts).
        transforms, hidden, depth: the coupling flow: ``transforms`` layers, each with ``depth``
            hidden layers of width ``hidden``.
        epochs, patience: per learning-rate stage; each stage restarts from the best weights so far.
        lrs: the learning rate of each stage (a step schedule driven by validation plateaus).
        batch_size, weight_decay: Adam's.
        chart_epochs: VQ-AE epochs (ignored by k-means).
        objective, top: the flows' training objective (:func:`vqflows.fit`): the mixture over each point's
            ``top`` nearest charts (the default), or ``"cells"``, the paper's hard-cell training.
        components: vMF mixture sizes tried, the best kept on validation.
        init: ``vq-sphere``'s start: ``"kernels"`` (the kernel density, :func:`vqflows.kernel_flow.fit_kernel_flow`)
            or ``"kmeans"`` (k-means charts and stereographic RealNVPs from a random start).
        kernel_alphas: the adaptivity exponents of the kernel densities tried on validation (0: one
            concentration for all kernels).
        kernel_transforms, kernel_hidden, kernel_depth, kernel_epochs, kernel_patience, kernel_lr, kernel_top:
            the shared flow of ``init="kernels"``: coupling layers, width and number of the hidden layers of
            each, epochs, patience, Adam's learning rate, charts per point in the leave-one-out objective.
    """

    points_per_chart: int = 16
    min_charts: int = 2
    max_charts: int = 512
    partition: str = "kmeans"
    m: int = 1
    eps: float = 0.0
    transforms: int = 8
    hidden: int = 128
    depth: int = 2
    epochs: int = 150
    patience: int = 10
    lrs: tuple[float, ...] = (3e-3, 1e-3)
    batch_size: int = 128
    weight_decay: float = 0.0
    chart_epochs: int = 30
    objective: str = "mixture"
    top: int = 4
    components: tuple[int, ...] = (25, 50, 100, 200)
    init: str = "kernels"
    kernel_alphas: tuple[float, ...] = (0.0, 0.5, 1.0)
    kernel_transforms: int = 2
    kernel_hidden: int = 32
    kernel_depth: int = 1
    kernel_epochs: int = 30
    kernel_patience: int = 5
    kernel_lr: float = 2e-3
    kernel_top: int = 8

    def __post_init__(self) -> None:
        for name in ("points_per_chart", "min_charts", "max_charts", "m", "transforms", "hidden", "depth", "epochs",
                     "patience", "batch_size", "chart_epochs", "top", "kernel_hidden", "kernel_depth", "kernel_epochs",
                     "kernel_patience", "kernel_top"):
            positive_int(getattr(self, name), name=name)
        positive_int(self.kernel_transforms, name="kernel_transforms", minimum=0)
        one_of(self.init, ("kernels", "kmeans"), name="init")
        if not self.kernel_alphas or not all(isinstance(a, (int, float)) and math.isfinite(a) and a >= 0
                                             for a in self.kernel_alphas):
            raise ValueError(f"kernel_alphas: expected one or more numbers >= 0, got {self.kernel_alphas!r}")
        if not (isinstance(self.kernel_lr, (int, float)) and math.isfinite(self.kernel_lr) and self.kernel_lr > 0):
            raise ValueError(f"kernel_lr: expected a number > 0, got {self.kernel_lr!r}")
        one_of(self.partition, ("kmeans", "vqae"), name="partition")
        one_of(self.objective, ("cells", "mixture"), name="objective")
        if self.min_charts < 2 or self.max_charts < self.min_charts:
            raise ValueError(f"min_charts, max_charts: expected 2 <= min_charts <= max_charts, "
                             f"got {self.min_charts} and {self.max_charts}")
        if self.m > self.min_charts:
            raise ValueError(f"m: expected at most min_charts={self.min_charts}, got {self.m}")
        for name in ("eps", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if not self.lrs or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in self.lrs):
            raise ValueError(f"lrs: expected one or more learning rates > 0, got {self.lrs!r}")
        if not self.components:
            raise ValueError("components: expected one or more mixture sizes, got none")
        for k in self.components:
            positive_int(k, name="components")

    def charts(self, n_train: int) -> int:
        """``K`` for a training set of ``n_train`` points."""
        return int(min(self.max_charts, max(self.min_charts, round(n_train / self.points_per_chart))))

    def with_overrides(self, overrides: Sequence[str] | dict[str, Any]) -> EarthConfig:
        """A copy with ``key=value`` overrides (:func:`vqflows.io.apply_overrides`; ``lrs=0.002`` or ``lrs=[3e-3,1e-3]``)."""
        return apply_overrides(self, overrides)

    def training(self, lr: float, seed: int, *, fit_charts: bool = True) -> TrainConfig:
        """The training settings of one stage (learning rate ``lr``): the fields of the same names."""
        return TrainConfig.from_record(self.to_dict(), lr=lr, seed=seed, fit_charts=fit_charts)

    def to_dict(self, model: str | None = None) -> dict:
        """The fields as JSON types; for ``model="vmf"`` (``"vmf-kde"``) only those the mixture (kernel density)
        uses, for ``vq-sphere`` those of its ``init``."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if model == "vmf":
            return {"components": d["components"]}
        if model == "vmf-kde":
            return {"kappas": list(KDE_KAPPAS), "floors": list(KDE_FLOORS)}
        kernel = [k for k in d if k.startswith("kernel_")]
        if model is not None:
            d.pop("components")
            if model == "vq-sphere" and self.init == "kernels":
                return {k: d[k] for k in ("init", *kernel)}
            for k in ("init", *kernel):
                d.pop(k)
        return d


def default_configs() -> dict[str, EarthConfig]:
    """The hyperparameters of each row, chosen on validation NLL (seed 0 splits) and shared by the datasets.

    The learned-surface rows are smaller and run one stage: their numbers are a side check (their
    density is not w.r.t. the unit sphere), and on two cores their cost would otherwise double the study.
    """
    main = EarthConfig()
    side = dataclasses.replace(main, points_per_chart=64, transforms=5, hidden=64, lrs=(3e-3,), epochs=40)
    return {"vmf": main, "vmf-kde": main, "sphere": main, "vq-sphere": main, "cef": side, "vq-cef": side}


def resolve_configs(models: Sequence[str], overrides: Sequence[str] = (), epochs: int | None = None
                    ) -> dict[str, EarthConfig]:
    """:func:`default_configs` of ``models`` with ``key=value`` (every row) or ``model.key=value`` overrides."""
    configs = {m: default_configs()[m] for m in models}
    shared, own = [], {m: [] for m in models}
    for item in overrides:
        key = item.split("=", 1)[0]
        if "." in key:
            model, rest = item.split(".", 1)
            one_of(model, list(MODELS), name="override")
            if model in own:
                own[model].append(rest)
        else:
            shared.append(item)
    for m in models:
        configs[m] = configs[m].with_overrides(shared).with_overrides(own[m])
        if epochs is not None:
            configs[m] = dataclasses.replace(configs[m], epochs=positive_int(epochs, name="epochs"))
    return configs


# ------------------------------------------------------------------------------------------ one run


def build_model(model: str, n_train: int, config: EarthConfig) -> VQFlow:
    """The VQ-Flow of a table row for a training set of ``n_train`` points (not ``"vmf"`` or ``"vmf-kde"``;
    ``vq-sphere`` as with ``init="kmeans"``: the kernel start is built from the data by :func:`run_one`)."""
    one_of(model, [m for m in MODELS if not m.startswith("vmf")], name="model")
    charts = config.charts(n_train) if model.startswith("vq-") else None
    return build(3, model.removeprefix("vq-"), charts, partition=config.partition, m=config.m if charts else 1,
                 eps=config.eps, transforms=config.transforms, hidden_features=(config.hidden,) * config.depth)


def train_in_stages(model: VQFlow, splits: EarthSplits, config: EarthConfig, seed: int) -> dict[str, Any]:
    """Fit ``model`` in stages, one per learning rate, each from the best weights of the last; the
    charts are learned in the first stage and kept after (weights and frames are refitted from them,
    identically).

    Returns the epochs run and the best epoch of each stage.
    """
    epochs, best = [], []
    for stage, lr in enumerate(config.lrs):
        history = fit(model, splits.train, splits.val,
                      config=config.training(lr, seed + 1000 * stage, fit_charts=stage == 0),
                      progress=False)
        epochs.append(history.epochs)
        best.append(history.best_epoch)
        if history.interrupted:
            raise KeyboardInterrupt
    return {"epochs": epochs, "best_epochs": best}


@torch.no_grad()
def _log_probs(log_prob, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([log_prob(xs) for xs in x.split(4096)]).double()


def with_floor(log_p: torch.Tensor, weight: float) -> torch.Tensor:
    r"""``log((1 - w) p + w / 4π)``: a density on S² mixed with the uniform one, ``(N,) -> (N,)``.

    Still normalised w.r.t. the area of the unit sphere; ``w = 0`` returns ``log_p``. The floor
    ``log(w / 4π)`` caps the loss of a test point far from every training point, where a flow's or
    a vMF's tails fall off like a Gaussian's.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"weight: expected 0 <= w < 1, got {weight!r}")
    if weight == 0:
        return log_p
    return torch.logaddexp(log_p + math.log1p(-weight), torch.full_like(log_p, math.log(weight / (4 * math.pi))))


def choose_floor(val_log_p: torch.Tensor, weights: Sequence[float] = FLOOR_WEIGHTS) -> float:
    # (FLOOR_WEIGHTS holds KDE_FLOORS, so a model started at a kernel density can take the same floor)
    """The weight in ``weights`` whose :func:`with_floor` mixture has the lowest validation NLL."""
    return min(weights, key=lambda w: (-float(with_floor(val_log_p, w).mean()), w))


@dataclass(frozen=True)
class EarthRun:
    """One run of the grid: a dataset's split ``seed`` fitted by the row ``model`` with ``config``.

    ``cost`` (training points times a model factor) orders the runs and weighs them in the ETA.
    """

    dataset: str
    model: str
    seed: int
    data_dir: str
    config: EarthConfig
    cost: float = 1.0

    def done(self, folder: Path) -> bool:
        """Whether ``folder/result.json`` exists and was made with this config (the fields this model uses)."""
        stored = read_json(folder / "result.json", {})
        return isinstance(stored, dict) and stored.get("config") == self.config.to_dict(self.model)


def run_one(run: EarthRun, folder: Path) -> dict[str, Any]:
    """Fit one table cell's run, saving the fitted model in ``folder``; returns ``{"result.json": result}``.

    The result holds the NLL (nats, mean over points) of the train, validation and test splits, the
    number of charts or components, epochs, wall and CPU seconds, and for ``cef`` rows the mean squared
    distance from the test points to the learned surface. ``train_nll`` is over :data:`TRAIN_EVAL`
    training points.
    """
    dataset, model, seed, config = run.dataset, run.model, run.seed, run.config
    one_of(model, MODELS, name="model")
    folder = Path(folder)
    wall, cpu = time.perf_counter(), time.process_time()
    splits = load_earth(dataset, data_dir=run.data_dir, seed=seed)
    torch.manual_seed(seed)
    result: dict[str, Any] = {"dataset": dataset, "model": model, "seed": seed, "density": MODELS[model],
                              "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
                              "config": config.to_dict(model)}
    folder.mkdir(parents=True, exist_ok=True)
    val = None
    if model == "vmf-kde":
        sel = fit_vmf_kde(splits.train, splits.val)
        log_prob = sel.model.log_prob
        write_json(folder / "vmf-kde.json", {"kappa": sel.kappa, "floor": sel.floor})
        result.update(kappa=sel.kappa, floor_weight=sel.floor, fit_seconds=time.perf_counter() - wall)
    elif model == "vq-sphere" and config.init == "kernels":
        fitted = fit_kernel_flow(splits.train, splits.val, alphas=config.kernel_alphas,
                                 transforms=config.kernel_transforms,
                                 hidden_features=(config.kernel_hidden,) * config.kernel_depth,
                                 epochs=config.kernel_epochs, patience=config.kernel_patience, lr=config.kernel_lr,
                                 top=config.kernel_top, seed=seed, guard_floors=FLOOR_WEIGHTS)
        flow, sel = fitted.model, fitted.selection
        log_prob, val = flow.log_prob, fitted.val_log_prob
        save_kernel_flow(flow, folder / "kernel-flow.pt", config)
        result.update(charts=flow.K, parameters=sum(p.numel() for p in flow.parameters()), epochs=[fitted.epochs],
                      best_epochs=[fitted.best_epoch], kernel_kappa=sel.kappa, kernel_alpha=sel.alpha,
                      kernel_floor=sel.floor, initial_val_nll=fitted.initial_val_nll,
                      fit_seconds=time.perf_counter() - wall, flow_seconds=fitted.seconds)
    elif model == "vmf":
        sel = fit_vmf_mixture(splits.train, splits.val, components=config.components, seed=seed)
        mixture = sel.model
        log_prob = mixture.log_prob
        mixture.save(folder / "vmf.json")
        result.update(components=sel.components, components_val_nll={str(k): v for k, v in sel.val_nll.items()})
    else:
        flow = build_model(model, len(splits.train), config)
        result.update(train_in_stages(flow, splits, config, seed))
        result["charts"] = flow.K
        result["parameters"] = sum(p.numel() for p in flow.parameters())
        log_prob = flow.log_prob
        if MODELS[model] == "learned surface":
            with torch.no_grad():
                result["reconstruction"] = float(flow.reconstruction(splits.test).double().mean())
        flow.save(folder / "model")
    if "fit_seconds" not in result:
        result["fit_seconds"] = time.perf_counter() - wall
    # A subset of the training split bounds the cost of the all-charts evaluation, O(N K); a kernel
    # model has a chart per training point, so it gets fewer.
    size = TRAIN_EVAL if model != "vq-sphere" or config.init != "kernels" else TRAIN_EVAL // 8
    subset = splits.train[torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:size]]
    val = _log_probs(log_prob, splits.val) if val is None else val.double()
    test = _log_probs(log_prob, splits.test)
    result.update(train_nll=-float(_log_probs(log_prob, subset).mean()), val_nll=-float(val.mean()),
                  test_nll=-float(test.mean()))
    if model in OWN_FLOOR:
        result.update(val_nll_floor=result["val_nll"], test_nll_floor=result["test_nll"])
    elif MODELS[model] == "unit sphere":
        w = choose_floor(val)
        result.update(floor_weight=w, val_nll_floor=-float(with_floor(val, w).mean()),
                      test_nll_floor=-float(with_floor(test, w).mean()))
    result.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
    return {"result.json": result}


def save_kernel_flow(model: VQFlow, path: str | os.PathLike, config: EarthConfig) -> None:
    """Write a VQ-Flow built by :func:`vqflows.kernel_flow.kernel_vqflow` (its recipe and weights) to ``path``."""
    save_torch(Path(path), {"transforms": config.kernel_transforms,
                            "hidden": [config.kernel_hidden] * config.kernel_depth, "state": model.state_dict()})


def load_kernel_flow(path: str | os.PathLike) -> VQFlow:
    """Read a model written by :func:`save_kernel_flow`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved["state"]
    model = kernel_vqflow(state["partition.means"], state["partition.kappas"],
                          transforms=saved["transforms"], hidden_features=tuple(saved["hidden"]))
    model.load_state_dict(state)
    return model.eval()


def load_fitted(folder: str | os.PathLike):
    """The fitted model of a run folder: a :class:`VQFlow` or a :class:`VMFMixture`."""
    folder = Path(folder)
    if (folder / "vmf.json").exists():
        return VMFMixture.load(folder / "vmf.json")
    if (folder / "kernel-flow.pt").exists():
        return load_kernel_flow(folder / "kernel-flow.pt")
    return VQFlow.load(folder / "model")


# ----------------------------------------------------------------------------------------- the grid


#: Relative CPU time per training point of each row with its default config (measured on the fire set,
#: ``sphere`` = 1), for ordering the runs and for the ETA.
_COST = {"vmf": 0.6, "vmf-kde": 0.3, "sphere": 1.0, "vq-sphere": 5.0, "cef": 0.3, "vq-cef": 1.0}


def run_folder(out: str | os.PathLike, run: EarthRun) -> Path:
    """``<out>/runs/<dataset>/<model>/seed-<seed>``."""
    return Path(out) / "runs" / run.dataset / run.model / f"seed-{run.seed}"


def plan(datasets: Sequence[str], models: Sequence[str], seeds: Sequence[int], data_dir: str | os.PathLike,
         configs: dict[str, EarthConfig]) -> list[EarthRun]:
    """Every dataset × model × seed, the most expensive first (so that two workers finish together)."""
    sizes = {d: round(0.8 * len(read_latlon(earth_path(d, data_dir)))) for d in datasets}
    runs = [EarthRun(d, m, s, str(data_dir), configs[m], sizes[d] * _COST[m])
            for d in datasets for m in models for s in seeds]
    return sorted(runs, key=lambda r: -r.cost)


def run_grid(runs: Sequence[EarthRun], out: str | os.PathLike, runner: Runner | None = None) -> Report:
    """Run the unfinished ``runs`` into ``out`` (see :class:`~.runner.Runner`; default: in this process)."""
    tasks = [Task(run_one, r, run_folder(out, r), label=f"{r.dataset}/{r.model}/seed-{r.seed}", cost=r.cost)
             for r in runs if not r.done(run_folder(out, r))]
    return (runner or Runner()).run(tasks, skipped=len(runs) - len(tasks), desc="earth")


# ---------------------------------------------------------------------------------------- the table


def collect(runs: Sequence[EarthRun], out: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``result.json`` of every finished run made with its current config."""
    return [read_json(run_folder(out, r) / "result.json") for r in runs if r.done(run_folder(out, r))]
