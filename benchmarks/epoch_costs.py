"""Costs inside every training epoch, each against its previous form, side by side in one process.

    python benchmarks/epoch_costs.py             # knotted, seed 0, five interleaved rounds
    python benchmarks/epoch_costs.py 5 "train run"   # only the pairs whose names hold one of these words

* **checkpoint**: writing the loop's state after an epoch of a 16-chart VQ-MAF member, its state dicts as
  they are (the previous layout) or packed into one flat tensor per dtype (:func:`~vqflows.training.checkpoint.pack`);
* **vq-cef epoch**: one training epoch of the default ``vq-cef`` with the conditional rotation's matrix
  exponential computed per row (the previous form) or once per distinct chart code
  (:func:`~vqflows.flows.conformal.per_context`);
* **grid run, maf / vq-realnvp**: a whole run as the paper grid trains it (:func:`~vqflows.runs.train_run`, knotted,
  the model's defaults) writing a checkpoint after every epoch (the previous form) or none (``resumable=False``,
  what the grid does now: it retrains an unfinished run from its start);
* **train run, maf**: a whole ``vqflows train`` run of MAF on the knot (:func:`~vqflows.runs.train_run`, resumable),
  its checkpoint written after every epoch (the previous form, ``CHECKPOINT_SECONDS = 0``) or after the first, then
  at most every :data:`~vqflows.training.checkpoint.CHECKPOINT_SECONDS` seconds and at the end;
* **exact check, maf**: the early-stopping check of a plain MAF on the 2,500 validation points with the second
  pass that computed its penalty (the previous form) or without it (a flow without a penalty,
  ``ChartFlow.penalised``);
* **kde calibration**: Table 2's bandwidth cross-validation on the knot's 5,000 training points, 16 bandwidths
  by 5 folds, with scikit-learn's ``GridSearchCV`` over a tree-based ``KernelDensity`` per bandwidth (the previous
  form) or one matrix of squared distances per fold (:func:`~vqflows.experiments.kde.select_bandwidth`);
* **vq-maf scoring passes**: what a default ``vq-maf`` run spends scoring after its members trained (8 members, each
  trained 2 epochs here): each member's validation pass for the selection table and the ensemble's test and
  validation passes (the previous form), or the test pass alone, the validation log-densities coming from the
  end of each member's training (``History.val_log_prob``) and the ensemble's from its stacking.

Prints the medians of the rounds (milliseconds) and each ratio new / previous; one torch thread.
"""

from __future__ import annotations

import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one

import torch

import vqflows
import vqflows.training.loop as loop
from vqflows.config import RunConfig
from vqflows.flows.conformal import ConditionalRotation
from vqflows.runs import train_run
from vqflows.training import checkpoint as ck
from vqflows.training import objective


def _checkpoint_payloads(splits):
    """The two ways of writing one checkpoint of a trained 16-chart member (state taken after 3 epochs)."""
    grabbed = []
    original = ck.Checkpoint.__call__

    def grab(self, *args):
        grabbed.append((self, args))
        original(self, *args)

    ck.Checkpoint.__call__ = grab
    try:
        config = RunConfig(dataset="knotted", model="vq-maf", seed=0)
        model = config.build_model(3, charts=16, partition="gmm")
        with tempfile.TemporaryDirectory() as folder:
            vqflows.fit(model, splits.train, splits.val, config=config.training().replace(epochs=3),
                        checkpoint=Path(folder) / "c.pt", progress=False)
    finally:
        ck.Checkpoint.__call__ = original
    self, (epoch, model, history) = grabbed[-1]
    s = self.state

    def write(packed: bool) -> None:
        wrap = ck.pack if packed else (lambda x: x)
        torch.save({"epoch": epoch, "model": wrap(model.state_dict()), "best": wrap(s.best),
                    "optimizer": wrap(s.opt.state_dict()), "generator": s.gen.get_state(),
                    "history": history.to_dict(), "fingerprint": self.fingerprint}, io.BytesIO())

    return lambda: write(False), lambda: write(True)


def _cef_epochs(splits):
    """One epoch of the default vq-cef with the rotation per row or per distinct context."""
    config = RunConfig(dataset="knotted", model="vq-cef", seed=0)
    model = config.build_model(3)
    history = vqflows.fit(model, splits.train, splits.val, config=config.training().replace(early_stopping=None, epochs=1),
                          progress=False)
    state = loop.set_up(model, splits.train, splits.val, config.training().replace(early_stopping=None), history)
    loop._derive(state)
    per_context = ConditionalRotation.matrix

    def epoch(grouped: bool) -> None:
        ConditionalRotation.matrix = per_context if grouped else ConditionalRotation._matrix
        try:
            loop.one_epoch(state, 1)
        finally:
            ConditionalRotation.matrix = per_context

    return lambda: epoch(False), lambda: epoch(True)


def _grid_runs(model: str, folder: Path):
    """A whole run of ``model`` on the knot, writing checkpoints after every epoch or none."""
    config = RunConfig(dataset="knotted", model=model, seed=0)

    def run(resumable: bool) -> None:
        torch.manual_seed(0)
        train_run(config, folder / model, overwrite=True, resumable=resumable)

    return lambda: run(True), lambda: run(False)


def _train_runs(model: str, folder: Path):
    """A whole resumable run of ``model`` on the knot, its checkpoint written after every epoch or throttled."""
    config = RunConfig(dataset="knotted", model=model, seed=0)
    throttled = ck.CHECKPOINT_SECONDS

    def run(every: float) -> None:
        ck.CHECKPOINT_SECONDS = every
        try:
            torch.manual_seed(0)
            train_run(config, folder / f"train-{model}", overwrite=True)
        finally:
            ck.CHECKPOINT_SECONDS = throttled

    return lambda: run(0.0), lambda: run(throttled)


def _maf_checks(splits):
    """The exact check of a plain MAF, with or without the pass that computed its (zero) penalty."""
    config = RunConfig(dataset="knotted", model="maf", seed=0)
    model = config.build_model(3).eval()
    val = model.check_points(splits.val)

    @torch.no_grad()
    def previous() -> None:
        ll = float(torch.logsumexp(model.chart_log_prob(val) + model.log_weights, dim=-1).mean())
        ll - float(objective.nearest_penalty(model, val).mean())

    return previous, lambda: objective.check_score(model, val, None)


def _calibrations(splits):
    """Table 2's bandwidth search, by scikit-learn's grid search over tree-based estimates or from one distance matrix."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    from vqflows.experiments import kde

    x = splits.train.double().numpy()
    grid = kde.bandwidth_grid(x)

    def previous() -> None:
        search = GridSearchCV(KernelDensity(kernel="gaussian", rtol=kde.RTOL), {"bandwidth": grid},
                              cv=KFold(5, shuffle=True, random_state=0), n_jobs=1)
        search.fit(x)

    return previous, lambda: kde.select_bandwidth(x, grid)


def _vq_maf_scoring(splits, folder: Path):
    """The scoring passes of a default vq-maf run after its members trained, before and after reusing them."""
    from vqflows.runs import default_top, evaluate, load_run

    config = RunConfig(dataset="knotted", model="vq-maf", seed=0, epochs=2)
    torch.manual_seed(0)
    train_run(config, folder / "vq-maf-scoring", resumable=False)
    model, _ = load_run(folder / "vq-maf-scoring")

    @torch.no_grad()
    def previous() -> None:
        for member in model.members:
            member.log_prob(splits.val)
        evaluate(model, splits, default_top(None))

    return previous, lambda: evaluate(model, splits, default_top(None), val=False)


def main(rounds: int = 5, only: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    splits = vqflows.datasets.load("knotted", n=10_000, seed=0)
    folder = Path(tempfile.mkdtemp())
    pairs = {  # each built only when it runs: name -> (build, calls per round)
        "checkpoint": (lambda: _checkpoint_payloads(splits), 20), "vq-cef epoch": (lambda: _cef_epochs(splits), 1),
        "grid run, maf": (lambda: _grid_runs("maf", folder), 1),
        "grid run, vq-realnvp": (lambda: _grid_runs("vq-realnvp", folder), 1),
        "exact check, maf": (lambda: _maf_checks(splits), 20), "kde calibration": (lambda: _calibrations(splits), 1),
        "vq-maf scoring passes": (lambda: _vq_maf_scoring(splits, folder), 1),
        "train run, maf": (lambda: _train_runs("maf", folder), 1)}
    try:
        for name, (build, repeat) in pairs.items():
            if only and not any(word in name for word in only):
                continue
            before, after = build()
            before(), after()  # warm-up
            times = {"previous": [], "new": []}
            for _ in range(rounds):
                for label, fn in (("previous", before), ("new", after)):
                    t0 = time.perf_counter()
                    for _ in range(repeat):
                        fn()
                    times[label].append((time.perf_counter() - t0) / repeat * 1e3)
            old, new = statistics.median(times["previous"]), statistics.median(times["new"])
            print(f"{name}: previous {old:.1f} ms, new {new:.1f} ms, ratio {new / old:.2f} (medians of {rounds} rounds)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, sys.argv[2:])
