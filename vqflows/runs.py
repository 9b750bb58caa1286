"""Run folders: one trained model with its resolved config, weights, metrics and training curve.

A run folder holds ``run.json`` (the mark of a vqflows run: its state and the SHA-256 of its config,
data and weights), ``config.json`` (the resolved :class:`RunConfig`), ``model/`` (see
:meth:`VQFlow.save`), ``metrics.json`` and ``history.json``/``history.csv``; a run on a file also
holds ``data.json`` (the file's absolute path and SHA-256). Files are written atomically; a
folder without ``metrics.json`` is unfinished, and ``interrupted.json`` marks one stopped by Ctrl-C.

While a run writes, its folder holds ``.lock`` (created exclusively, holding the writer's pid and
host), so a second writer is refused instead of silently mixing two runs. Nothing a finished or
interrupted run made is replaced unless asked (``overwrite``, or ``resume`` for an interrupted run),
and ``overwrite`` builds the new run in a hidden folder inside the old one
(``.vqflows-new-<pid>``) and moves it into place only once it has finished: a new run that fails,
diverges, is interrupted or killed leaves the old run as it was. A folder holding run files that
no vqflows run wrote (no ``run.json``) is never written into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import datasets
from .baselines import Classical, fit_baseline
from .checks import spread

# the settings and the folder states live in .config, importable without torch (the command line checks
# them first); re-exported here
from .config import FORMAT, MARKER, RunConfig, default_top, refuse_folder, run_state
from .config import MODELS as MODELS
from .config import SettingError as SettingError
from .ensemble import VQFlowEnsemble
from .ensemble import load as load_model
from .io import claim, write_bytes
from .model import VQFlow
from .run_files import (
    ASIDE,
    STAGING,
    check_data,
    check_files,
    checkpoints,
    clear,
    data_record,
    read_config,
    remove_hidden,
    run_record,
    splits_digest,
    swap_in,
    write_history,
    write_marker,
    write_run_json,
)
from .selection import CANDIDATES, REPEAT_SEED, partition_candidates, select_charts, stack_top
from .training import History, check_threads, fit, torch_threads

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``str(error)`` says what its folder kept and how to go on."""


def load_data(config: RunConfig) -> datasets.Splits:
    """The run's splits (built-in name, or a path to a user's ``.npy``/``.csv``)."""
    return datasets.load(config.dataset, n=config.n, seed=config.seed)


@torch.no_grad()
def evaluate(model: VQFlow | VQFlowEnsemble | Classical, splits: datasets.Splits, top: int = 4, *, val: bool = True) -> dict[str, float]:
    """Test (and with ``val``, validation) log-likelihoods in mean nats per point, the top-``top`` lower bound,
    the oracle and the reconstruction error (a classical baseline has only the log-likelihoods and the oracle).

    The test points are scored under every chart once: the exact mixture and the bound over each
    point's ``top`` nearest charts (an ensemble's: each member's nearest, as
    :meth:`~vqflows.ensemble.VQFlowEnsemble.log_prob_bound`) both come from that one pass, and for an ensemble each member's own
    test log-likelihood (``member_test_log_likelihood``, and its ``member_gap_to_oracle``).
    """
    if isinstance(model, Classical):
        out = {"test_log_likelihood": float(model.log_prob(splits.test).mean()),
               "oracle_log_likelihood": None, "gap_to_oracle": None}
        if val:
            out["val_log_likelihood"] = float(model.log_prob(splits.val).mean())
        if splits.dataset is not None:
            out["oracle_log_likelihood"] = float(splits.dataset.log_prob(splits.test).mean())
            out["gap_to_oracle"] = out["oracle_log_likelihood"] - out["test_log_likelihood"]
        return out
    x = model.check_points(splits.test)
    joint = model.chart_log_prob(x) + model.log_weights  # (N, K): log p_k + log p(x | k)
    mixture = torch.logsumexp(joint, dim=-1)
    if not bool(torch.isfinite(mixture).all()):
        model.log_prob(x)  # raises the error that names the overflowing rows
    # an ensemble's charts come member by member: each member's bound sums its own nearest charts
    slices = model.member_charts if isinstance(model, VQFlowEnsemble) else [(0, model.K)]
    distances = model.chart_distances(x)
    bound = torch.logsumexp(torch.stack([
        torch.logsumexp(joint[:, a:b].gather(1, distances[:, a:b].topk(min(top, b - a), dim=-1, largest=False).indices),
                        dim=-1) for a, b in slices], dim=-1), dim=-1)
    out = {
        "test_log_likelihood": float(mixture.mean()),
        # the lower bound over each point's nearest charts (the mixture objective's), beside the exact mixture
        "test_log_likelihood_top": float(bound.mean()),
        "top": top,
        "oracle_log_likelihood": None,
        "gap_to_oracle": None,
    }
    if val:
        out["val_log_likelihood"] = float(model.log_prob(splits.val).mean())
    if splits.dataset is not None:
        oracle = float(splits.dataset.log_prob(splits.test).mean())
        out["oracle_log_likelihood"] = oracle
        out["gap_to_oracle"] = oracle - out["test_log_likelihood"]
    if isinstance(model, VQFlowEnsemble):  # each member alone, from the same pass: what stacking them gained
        members = [torch.logsumexp(joint[:, a:b] - lw, dim=-1) for (a, b), lw in zip(slices, model.log_mix)]
        out["member_test_log_likelihood"] = [float(m.mean()) for m in members]
        if out["oracle_log_likelihood"] is not None:
            out["member_gap_to_oracle"] = [out["oracle_log_likelihood"] - v for v in out["member_test_log_likelihood"]]
    if model.manifold_dim < model.features:
        out["reconstruction_error"] = float(model.reconstruction(splits.test).mean())
    return out


def parameters(model: torch.nn.Module | Classical) -> int:
    if isinstance(model, Classical):
        return model.parameters
    return sum(p.numel() for p in model.parameters())


def train_run(config: RunConfig, out: str | os.PathLike, *, progress: bool | None = False, overwrite: bool = False,
              resume: bool = False, callback: Callable[[int, VQFlow, History], None] | None = None,
              resumable: bool = True) -> dict[str, Any]:
    """Train the run ``config`` into the folder ``out`` and return its metrics.

    The data, model and settings are checked before the folder is touched. The folder is then
    claimed with ``.lock`` (a second writer gets ``ValueError``; every error releases it). A
    finished run is replaced only with ``overwrite``; an unfinished one (e.g. stopped by Ctrl-C)
    only with ``overwrite`` or ``resume``. ``overwrite`` trains the new run in a hidden folder inside
    ``out`` and swaps it in only once it has finished, so that the old run survives a new one that
    fails or is stopped; a folder with run files but no ``run.json`` (not a vqflows run) is refused.
    With ``resume`` the saved settings must match ``config`` (device and threads aside) and the data
    file must be unchanged; training goes on from ``checkpoint.pt`` (written after every epoch) where
    :func:`fit` supports checkpoints, and starts over otherwise.

    On Ctrl-C the best weights so far (if a flow epoch finished) are saved with
    ``interrupted.json``, then :class:`RunInterrupted` says what the folder kept. A run that fails
    on a fresh folder removes what it wrote. ``callback(epoch, model, history)`` is passed to :func:`fit`;
    ``progress`` shows its progress bars (``None``: when a person is watching, :func:`vqflows.training.interactive`).
    ``resumable=False`` writes no ``checkpoint.pt`` after each epoch: an unfinished run can then only start over,
    as a benchmark grid's does (it retrains every unfinished run), and the writing is saved.
    """
    out = Path(out)
    if overwrite and resume:
        raise ValueError("resume: expected either resume or overwrite, got both")
    if resume and not resumable:
        raise ValueError("resumable: expected True with resume (a run resumes from its checkpoint), got False")
    check_threads(config.threads)  # absurd counts crash torch's thread pool: refused before anything is made
    if config.threads:
        torch.set_num_threads(config.threads)
    config, rank = _join_process_group(config)
    splits = load_data(config)
    spread(splits.train, name=config.dataset, every_column=config.flow != "cef")
    config.check_size(len(splits.train))
    torch.manual_seed(config.seed)  # the initial weights belong to the run, not to the process's history
    model = None if config.is_baseline else config.build_model(splits.train.shape[1])
    if rank and model is None:  # a baseline fits on rank 0 alone
        return {}
    if model is not None:  # refused before the folder is touched; with charts="auto" the fewest candidates must fit
        model.check_training_data(splits.train, name=f"{config.dataset} (training split)",
                                  charts=min(CANDIDATES) if config.charts == "auto" and config.is_vq else None)
    if config.is_vq or config.is_baseline:
        # scikit-learn (k-means and mixtures of the chart stage, the baselines) is imported here, before the folder
        # is touched: Ctrl-C half-way through an import leaves a broken module and a traceback, not a clean stop
        import sklearn.cluster  # noqa: F401  # deferred: slow to import, and not needed by the plain flows
        import sklearn.mixture  # noqa: F401  # deferred: as above
        import sklearn.neighbors  # noqa: F401  # deferred: as above
    if rank:  # another rank of a data-parallel run: train beside rank 0, which alone writes the folder
        _fit(config, model, splits, progress=False, callbacks=[callback] if callback else [],
             checkpoint=out / CHECKPOINT if resume else None)
        return {}

    with _claim(out):
        state = _state(out)
        refusal = refuse_folder(out, state, overwrite=overwrite, resume=resume)
        if refusal:
            raise ValueError(refusal)
        if state == "unfinished" and resume:
            _check_resumable(out, config, splits)
        remove_hidden(out, STAGING)  # left by a run killed while building beside this one
        if overwrite:
            remove_hidden(out, ASIDE)  # left by a swap that was killed half-way: being replaced now
        if not (overwrite and state != "new"):
            return _train_into(out, config, model, splits, fresh=state == "new", progress=progress,
                               callback=callback, resumable=resumable)
        stage = out / f"{STAGING}{os.getpid()}"
        try:
            stage.mkdir()
            metrics = _train_into(stage, config, model, splits, fresh=True, progress=progress, callback=callback,
                                  resumable=resumable)
            swap_in(out, stage)
        except RunInterrupted:
            raise RunInterrupted(f"interrupted: nothing replaced, the run in {out} is as it was "
                                 f"(overwrite starts the new run over)") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return metrics


def _train_into(out: Path, config: RunConfig, model: VQFlow, splits: datasets.Splits, *, fresh: bool,
                progress: bool | None, callback: Callable | None, resumable: bool = True) -> dict[str, Any]:
    """Train into the claimed folder ``out`` (a new run when ``fresh``, else a resumed one, whose first
    files are put back as they were if it fails)."""
    history = None
    kept = {} if fresh else {name: (out / name).read_bytes() for name in (MARKER, "config.json", "data.json")
                             if (out / name).is_file()}
    try:
        write_run_json(out / MARKER, {"format": FORMAT, "state": "running"})  # first: the folder is a run from here on
        write_run_json(out / "config.json", config.to_dict())
        if splits.path is not None:
            write_run_json(out / "data.json", {"path": splits.path, "sha256": splits.sha256,
                                            "rows": sum(len(t) for t in (splits.train, splits.val, splits.test)),
                                            "features": splits.features})
        write_marker(out, "running", splits)
        t0 = time.perf_counter()
        model, history, selection = _fit(config, model, splits, progress=progress,
                                         callbacks=[callback] if callback else [],
                                         checkpoint=out / CHECKPOINT if resumable else None)
        seconds = time.perf_counter() - t0  # with a selection: every candidate and the mixture's sizing
        model.to("cpu")
        metrics = {"dataset": config.dataset, "model": config.model, "seed": config.seed}
        if splits.sha256 is not None:
            metrics["dataset_sha256"] = splits.sha256
        if not history.interrupted:
            # a stacked ensemble was scored on validation by its stacking (the same log-densities): not twice
            stacked = (selection[-1] if isinstance(model, VQFlowEnsemble) and selection
                       and selection[-1]["partition"] == "ensemble" else None)
            metrics.update(evaluate(model, splits, default_top(config.top), val=stacked is None))
            if stacked is not None:
                metrics["val_log_likelihood"] = stacked["val_log_likelihood"]
        metrics.update(epochs=history.epochs, best_epoch=history.best_epoch,
                       train_seconds=history.train_seconds if selection is None else seconds,
                       chart_seconds=history.chart_seconds, flow_seconds_per_epoch=history.flow_seconds / max(history.epochs, 1),
                       parameters=parameters(model), stopped_early=history.stopped_early,
                       interrupted=history.interrupted)
        if selection is not None:
            ensemble = isinstance(model, VQFlowEnsemble)
            metrics.update(charts_selected=model.config["charts"] if ensemble else model.K,
                           partition_selected="ensemble" if ensemble else model.config.get("partition"),
                           chart_selection=selection)
        if isinstance(model, Classical):
            metrics.update(size_selected=model.size, size_selection=model.selection)
        model.save(out / "model")
        write_history(out, history)
        if history.interrupted:
            write_run_json(out / "interrupted.json", metrics)
            write_marker(out, "interrupted", splits)
            raise KeyboardInterrupt
        write_marker(out, "finished", splits)
        write_run_json(out / "metrics.json", metrics)  # last: the folder is a finished run from here on
        for path in [out / "interrupted.json", *checkpoints(out)]:  # a finished run has nothing left to resume
            path.unlink(missing_ok=True)
    except KeyboardInterrupt:
        raise RunInterrupted(_kept(out, history)) from None
    except BaseException:
        if fresh:
            clear(out)
        for name, data in kept.items():
            write_bytes(out / name, data)
        raise
    return metrics


def _fit(config: RunConfig, model: VQFlow, splits: datasets.Splits, **options: Any
         ) -> tuple[VQFlow | VQFlowEnsemble, History, list[dict] | None]:
    """Train ``model`` (or, with ``charts="auto"`` or ``partition="auto"``, choose the chart count and the
    partition on validation: one model per candidate, each training with its own checkpoint); returns the trained
    model, its history and the selection table."""
    if config.is_baseline:  # fitted and sized on validation, no training
        t0 = time.perf_counter()
        # the mixture's count grid stops at the first count that scores worse than the best: the same choice as
        # the whole grid in every run of the paper grid, at a third of its time (docs/results.md)
        estimator = fit_baseline(config.model, splits.train, splits.val, seed=config.seed,
                                 patience=1 if config.model == "gmm" else None)
        return estimator, History(chart_seconds=time.perf_counter() - t0), None
    candidates = auto_candidates(config)
    if candidates is None:
        return model, fit(model, splits.train, splits.val, config=config.training(), **options), None

    def make(k: int, partition: str | None = None, repeat: int = 0) -> VQFlow:
        torch.manual_seed(config.seed + REPEAT_SEED * repeat)
        return config.build_model(splits.train.shape[1], charts=k, partition=partition)

    training = config.training()
    if config.stacked and config.top is None:  # two charts per point on curves
        training = training.replace(top=stack_top(splits.train, config.charts, config.seed))
    return select_charts(make, splits.train, splits.val, candidates=candidates, config=training,
                         stack=config.stacked, **options)


def auto_candidates(config: RunConfig) -> list[tuple] | None:
    """The ``(partition, K)`` candidates a run trains, or ``None`` for a single model
    (:func:`~vqflows.selection.partition_candidates` for the run's flow, partition and charts)."""
    if not config.is_vq:
        return None
    return partition_candidates(config.flow, config.partition, config.charts, config.members)


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
    how = ("resume continues from the last finished epoch" if checkpoints(out)
           else "resume or overwrite starts it over")
    return f"interrupted: kept {what}; {how}"


_state = run_state


def _check_resumable(out: Path, config: RunConfig, splits: datasets.Splits) -> None:
    saved = read_config(out / "config.json")
    ignore = {"device", "threads"}
    differ = [k for k, v in config.to_dict().items() if k not in ignore and saved.to_dict()[k] != v]
    if differ:
        k = differ[0]
        raise ValueError(f"resume: expected the settings of the run in {str(out)!r}, got {k}={getattr(config, k)!r} "
                         f"where the run has {k}={getattr(saved, k)!r}")
    check_data(out, splits)


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


def load_run(path: str | os.PathLike) -> tuple[VQFlow | VQFlowEnsemble | Classical, RunConfig]:
    """The model and config of the run folder ``path``; unreadable files raise ``ValueError`` naming them."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"run: expected a run folder with config.json, got {str(path)!r}")
    config = read_config(path / "config.json")
    where = path / "model"
    if config.is_baseline:
        model = Classical.load(where)
        check_files(path)
        return model, config
    try:
        model = load_model(where)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where / 'config.json'}: expected the model's JSON settings, got unreadable JSON ({e})"
                         ) from None
    except ValueError:
        raise
    except (RuntimeError, EOFError, OSError, TypeError, KeyError, pickle.UnpicklingError) as e:
        detail = (str(e).strip().splitlines() or ["empty or truncated file"])[0][:120]
        raise ValueError(f"{where}: expected the weights and settings written by training, got unreadable files "
                         f"({type(e).__name__}: {detail})") from None
    check_files(path)
    return model, config


def run_status(path: str | os.PathLike) -> str:
    """``"finished"``, ``"interrupted"`` (stopped by Ctrl-C: the best weights so far) or ``"unfinished"``
    (still running, killed or failed)."""
    path = Path(path)
    if (path / "metrics.json").exists():
        return "finished"
    return "interrupted" if (path / "interrupted.json").exists() else "unfinished"


def evaluate_run(path: str | os.PathLike) -> dict[str, Any]:
    """Re-evaluate the run folder ``path`` on its test split; returns its metrics with fresh test numbers.

    The test log-likelihood, its top-``top`` bound, the oracle and the reconstruction error are
    recomputed; the validation log-likelihood is the one recorded at training (the same weights),
    computed only when the recorded metrics lack it. A run whose files changed since training is
    refused: its ``config.json`` or ``model/`` (their SHA-256 in ``run.json``), its data (the digest of
    the splits), or the data file's bytes.
    ``status`` says whether the run finished; an interrupted run's numbers are those of its best
    weights so far (``interrupted`` is true), not of a full run.
    """
    path = Path(path)
    model, config = load_run(path)
    status = run_status(path)
    metrics_file = path / ("metrics.json" if status == "finished" else "interrupted.json")
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except ValueError:
        metrics = {}  # the numbers are recomputed below
    metrics = metrics if isinstance(metrics, dict) else {}
    record = data_record(path)
    if record is not None:  # the absolute path: evaluation works from any directory
        config = dataclasses.replace(config, dataset=record["path"])
    splits = load_data(config)
    check_data(path, splits)
    sha = run_record(path).get("sha256", {}).get("data")
    if sha is not None and sha != splits_digest(splits):
        raise ValueError(f"run: expected the points the run in {str(path)!r} was trained and tested on "
                         f"(sha256 {sha[:12]}...), got other points from {config.dataset!r} with seed {config.seed} "
                         f"and n {config.n}")
    metrics.update({"dataset": config.dataset, "model": config.model, "seed": config.seed})
    with torch_threads(config.threads or None):  # the run's threads, as in training (small flows gain nothing from more)
        metrics.update(evaluate(model, splits, default_top(config.top), val=not isinstance(metrics.get("val_log_likelihood"), float)))
    metrics["parameters"] = parameters(model)
    metrics.update(status=status, interrupted=status != "finished")
    return metrics


