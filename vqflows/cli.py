"""The ``vqflows`` command line: ``datasets``, ``train``, ``evaluate``, ``sample``, ``benchmark``.

Everything a person can get wrong is checked before torch is imported: the arguments, the run
settings (``--set``, through :class:`vqflows.config.RunConfig`), the dataset's name or file, the
output folder or file and the run folder to read. So a mistake is answered at once — one line and
exit code 2 — instead of after the several seconds that importing torch, zuko and scikit-learn
takes. Those imports are deferred into the commands, after their checks: :mod:`vqflows.runs`
(training, evaluation, run folders) is imported only once a command is about to do its work, and
``datasets`` reads the summaries stored with the package (:mod:`vqflows.catalog`) and imports no
torch at all.

Exit codes: 0 done, 2 bad arguments or input (one line on stderr), 130 interrupted (Ctrl-C); ``benchmark``
also returns 1 when some of its runs failed.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import shlex
import sys
import threading
import warnings
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import numpy as np

# light imports only (the standard library, NumPy and the package's torch-free modules): see the docstring
from . import catalog
from .checks import fits_in_memory, seed
from .config import MODELS, RunConfig, SettingError, refuse_folder, run_state
from .io import save_numpy, write_text

#: How ``sample --out`` writes each suffix: NumPy's binary format, or text (comma- or space-separated);
#: ``--dataset`` reads each of them back.
SAMPLE_FORMATS = {".npy": None, ".csv": ",", ".txt": " "}
#: File suffixes ``--dataset`` reads (:func:`vqflows.datasets.read_points`).
DATA_SUFFIXES = (".npy", ".csv", ".txt")


class UsageError(ValueError):
    """A command-line mistake found before any work began (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (what was wrong, and where the help is) instead of the usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} -h`)")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=lambda o: None))


def _cmd_datasets(args, argv: list[str]) -> int:
    rows = catalog.summaries()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':22s} {'D':>2s} {'train':>6s} {'val':>6s} {'test':>6s} {'oracle E[log p]':>16s}")
    for r in rows:
        oracle = f"{r['oracle']:>16.3f}" if r["oracle"] is not None else f"{'-':>16s}"
        print(f"{r['name']:22s} {r['features']:>2d} {r['train']:>6d} {r['val']:>6d} {r['test']:>6d} {oracle}")
    return 0


def _check_dataset(dataset: str) -> None:
    """A built-in name, or an existing data file with a suffix that ``--dataset`` reads."""
    if dataset in catalog.names():
        return
    path = Path(dataset)
    if path.suffix.lower() not in DATA_SUFFIXES:
        known = ", ".join(catalog.names())
        raise UsageError(f"--dataset: expected one of {known} (see `vqflows datasets`) or a .npy, .csv or .txt "
                         f"file, got {dataset!r}")
    if not path.is_file():
        raise UsageError(f"--dataset: expected an existing {path.suffix} file, got {dataset!r} (no such file)")


def _check_out(out: Path, *, overwrite: bool, resume: bool) -> str:
    """What ``--out`` holds must fit ``--overwrite``/``--resume`` (the run checks again when it claims the
    folder); returns its state (:func:`vqflows.config.run_state`)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: expected a run folder, got the file {str(out)!r}")
    state = run_state(out)
    refusal = refuse_folder(out, state, overwrite=overwrite, resume=resume, flags=True)
    if refusal:
        raise UsageError(refusal)
    return state


def _resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted ``vqflows train`` (its arguments, ``--resume`` for ``--overwrite``)."""
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return shlex.join(["vqflows", *kept, "--resume"])


def _cmd_train(args, argv: list[str]) -> int:
    if args.resume and args.overwrite:
        raise UsageError("--resume: expected either --resume or --overwrite, got both")
    config = RunConfig(dataset=args.dataset, model=args.model, seed=args.seed, epochs=args.epochs,
                       device=args.device, threads=args.threads)
    config = config.with_overrides([item for group in args.set or [] for item in group])
    _check_dataset(config.dataset)
    out = Path(args.out or f"runs/{Path(config.dataset).stem}-{config.model}-{config.seed}")
    state = "new"
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone owns the folder
        state = _check_out(out, overwrite=args.overwrite, resume=args.resume)

    from .runs import RunInterrupted, train_run  # deferred: imports torch

    try:
        with _interrupts_kept():
            metrics = train_run(config, out, progress=None if not (args.json or args.quiet) else False,
                                overwrite=args.overwrite, resume=args.resume)
    except RunInterrupted as e:
        if args.overwrite and state != "new":  # the new run was built beside the old one, which stays
            print(f"vqflows train: interrupted: nothing replaced, the run in {out} is as it was; "
                  f"to start the new run over: {shlex.join(['vqflows', *argv])}", file=sys.stderr)
            return 130
        kept = str(e).rsplit("; ", 1)[0]  # what the folder kept (how to go on is said here, as a command)
        how = ("to continue from the last finished epoch" if any(out.glob("checkpoint*.pt"))
               else "to start it over")
        print(f"vqflows train: {kept}; {how}: {_resume_command(argv)}", file=sys.stderr)
        return 130
    if not metrics:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    metrics["out"] = str(out)
    _report(metrics, args.json)
    return 0


def _report(metrics: dict, as_json: bool) -> None:
    if as_json:
        _print_json(metrics)
        return
    if metrics.get("status", "finished") != "finished":
        epochs = f" after {metrics['epochs']} epochs" if isinstance(metrics.get("epochs"), int) else ""
        print(f"{'status':28s} {metrics['status']}: the best weights so far{epochs}, not a finished run's")
    for key in ("dataset", "model", "seed", "test_log_likelihood", "test_log_likelihood_top", "val_log_likelihood",
                "oracle_log_likelihood", "gap_to_oracle", "reconstruction_error", "epochs", "train_seconds",
                "parameters", "out"):
        if key in metrics and metrics[key] is not None:
            v = metrics[key]
            print(f"{key:28s} {v:.4f}" if isinstance(v, float) else f"{key:28s} {v}")


def _check_run(run: str) -> None:
    if not (Path(run) / "config.json").is_file():
        raise UsageError(f"run: expected a run folder with config.json (made by `vqflows train --out`), got {run!r}")


def _cmd_evaluate(args, argv: list[str]) -> int:
    _check_run(args.run)
    from .runs import evaluate_run  # deferred: imports torch

    metrics = evaluate_run(args.run)
    _report(metrics, args.json)
    return 0


def _cmd_sample(args, argv: list[str]) -> int:
    if args.n < 1:
        raise UsageError(f"-n: expected an integer >= 1, got {args.n}")
    seed(args.seed)
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise UsageError(f"--out: expected a file ending in .npy, .csv or .txt, got {str(out)!r}")
    if not out.parent.is_dir():
        above = next((p for p in out.parents if p.exists()), None)
        why = f"{str(above)!r} is a file, not a folder" if above is not None and not above.is_dir() \
            else f"no folder {str(out.parent)!r}"
        raise UsageError(f"--out: expected a file in an existing folder, got {str(out)!r} ({why})")
    if out.is_dir():
        raise UsageError(f"--out: expected a file name, got the folder {str(out)!r}")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out: expected a new file, got the existing {str(out)!r} (add --overwrite to replace it)")
    _check_run(args.run)

    from .runs import load_run  # deferred: imports torch

    model, _ = load_run(args.run)
    # the samples (drawn in float32, then joined) and the file's bytes: .npy twice as they are, text about
    # 25 characters a value, also twice; sample() checks its own share again
    per_value = 4 * 2 + (8 if SAMPLE_FORMATS[suffix] is None else 50)
    fits_in_memory(args.n * (8 + per_value * model.features), name="n",
                   what=f"{args.n:,} samples of {model.features} values written as {suffix}", value=args.n)
    x = model.sample(args.n, seed=args.seed).detach().cpu().numpy()
    if SAMPLE_FORMATS[suffix] is None:
        save_numpy(out, x)
    else:
        text = StringIO()
        np.savetxt(text, x, delimiter=SAMPLE_FORMATS[suffix])
        write_text(out, text.getvalue())
    print(f"wrote {args.n} samples of shape {x.shape} to {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command but ``benchmark`` (whose studies parse their own options)."""
    p = _Parser(prog="vqflows", description="VQ-Flows: exact densities on data manifolds.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list the built-in datasets with their oracle E[log p]")
    d.add_argument("--json", action="store_true", help="print one JSON list of the rows")

    t = sub.add_parser("train", help="train one model into a run folder")
    t.add_argument("--dataset", default="helix",
                   help="a built-in name (`vqflows datasets`) or a .npy/.csv/.txt file of points (N, D) (default: helix)")
    t.add_argument("--model", default="vq-maf", choices=MODELS, help="the model (default: vq-maf)")
    t.add_argument("--seed", type=int, default=0, help="seeds the data, the weights and training (default: 0)")
    t.add_argument("--epochs", type=int, default=100,
                   help="the most flow epochs; early stopping may end sooner (default: 100)")
    t.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<model>-<seed>)")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i> (default: cpu)")
    t.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small flows gain nothing from more; 0: torch's default)")
    t.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="run settings, e.g. charts=16 lr=0.002 or charts=auto (may be repeated)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (finished or not)")
    t.add_argument("--resume", action="store_true",
                       help="continue the unfinished (e.g. interrupted) run in --out with the same settings")
    t.add_argument("--json", action="store_true", help="print one JSON object with the metrics")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="re-evaluate a run folder on its test split")
    e.add_argument("run", help="a run folder written by `vqflows train`")
    e.add_argument("--json", action="store_true", help="print one JSON object with the metrics")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", help="a run folder written by `vqflows train`")
    s.add_argument("-n", type=int, default=10_000, help="number of samples (default: 10000)")
    s.add_argument("--seed", type=int, default=0, help="seeds the draw (default: 0)")
    s.add_argument("--out", default="samples.npy",
                   help="file ending in .npy, .csv or .txt (space-separated), each readable by `vqflows train --dataset` "
                        "(default: samples.npy)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    sub.add_parser("benchmark", help="reproduce the paper's tables and figures (see `vqflows benchmark -h`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 done, 2 bad arguments or input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "benchmark":
        from .experiments.cli import main as bench_main  # deferred: imports torch; the studies parse their own options

        return bench_main(argv[1:])
    handler = {"datasets": _cmd_datasets, "train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample}
    command = argv[0] if argv and argv[0] in handler else None

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"vqflows{' ' + command if command else ''}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            args = build_parser().parse_args(argv)
            command = args.command
            return handler[command](args, argv)
        except MemoryError:
            return _error(command, "out of memory; use fewer points (--set n=...) or fewer samples (-n)")
        except OSError as e:  # a full disk, a folder that cannot be written, ...: what the system said, and where
            where = f" ({e.filename})" if e.filename else ""
            return _error(command, f"could not write or read a file: {e.strerror or e}{where}; no file was "
                                   f"left half-written")
        except Exception as e:
            if not (isinstance(e, ValueError) or _training_error(e)):
                raise
            # one line: the messages name what was expected and what came
            return _error(command, e.cli() if isinstance(e, SettingError) else str(e))


def run() -> None:
    """The ``vqflows`` command: :func:`main`, its exit code the process's.

    An interrupted command (130) leaves without the interpreter's finalisation: where a Ctrl-C first
    landed inside code that some library runs through ``PyRun_String`` (as pybind11 does), CPython ends
    the process with SIGINT (exit code -2) however the command handled it. Every file of the run is
    written and closed by then; the output streams are flushed here.
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    else:
        raise SystemExit(code)


@contextmanager
def _interrupts_kept():
    """Deliver a Ctrl-C that Python would drop: one that lands in a callback it cannot raise from (the
    weak-reference callback of an import's module lock, a finaliser) is reported as unraisable and lost,
    so the command would run on to the end. Here it is raised again in the main thread a moment later,
    and not printed; other unraisable errors are reported as before."""
    previous, timers = sys.unraisablehook, []

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            timers.append(threading.Timer(0.05, _thread.interrupt_main))
            timers[-1].start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in timers:
            timer.cancel()


def _error(command: str | None, message: str) -> int:
    print(f"vqflows{' ' + command if command else ''}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _training_error(e: Exception) -> bool:
    """Whether ``e`` is a :class:`vqflows.training.TrainingError` (without importing torch to ask)."""
    training = sys.modules.get(f"{__package__}.training")
    return training is not None and isinstance(e, training.TrainingError)
