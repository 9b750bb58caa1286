"""The ``vqflows`` command line: ``datasets``, ``train``, ``evaluate``, ``sample``, ``benchmark``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=lambda o: None))


def _cmd_datasets(args) -> int:
    from . import datasets

    rows = datasets.info()
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'name':22s} {'D':>2s} {'train':>6s} {'val':>6s} {'test':>6s} {'oracle E[log p]':>16s}")
    for r in rows:
        print(f"{r['name']:22s} {r['features']:>2d} {r['train']:>6d} {r['val']:>6d} {r['test']:>6d} {r['oracle']:>16.3f}")
    return 0


def _cmd_train(args) -> int:
    from .runs import RunConfig, RunInterrupted, train_run

    config = RunConfig(dataset=args.dataset, model=args.model, seed=args.seed, epochs=args.epochs,
                       device=args.device, threads=args.threads)
    config = config.with_overrides([item for group in args.set or [] for item in group])
    out = Path(args.out or f"runs/{Path(config.dataset).stem}-{config.model}-{config.seed}")
    try:
        metrics = train_run(config, out, progress=not args.json and not args.quiet, overwrite=args.overwrite,
                            resume=args.resume)
    except RunInterrupted as e:
        print(f"vqflows train: {e}", file=sys.stderr)
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


def _cmd_evaluate(args) -> int:
    from .runs import evaluate_run

    metrics = evaluate_run(args.run)
    _report(metrics, args.json)
    return 0


#: How ``sample --out`` writes each suffix: NumPy's binary format, or text (comma- or space-separated).
SAMPLE_FORMATS = {".npy": None, ".csv": ",", ".txt": " "}


def _cmd_sample(args) -> int:
    from .checks import fits_in_memory, positive_int, seed
    from .io import save_numpy, write_text
    from .runs import load_run

    n = positive_int(args.n, name="n")
    seed(args.seed)
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SAMPLE_FORMATS:
        raise ValueError(f"out: expected a file ending in .npy, .csv or .txt, got {str(out)!r}")
    if not out.parent.is_dir():
        above = next((p for p in out.parents if p.exists()), None)
        why = f"{str(above)!r} is a file, not a folder" if above is not None and not above.is_dir() \
            else f"no folder {str(out.parent)!r}"
        raise ValueError(f"out: expected a file in an existing folder, got {str(out)!r} ({why})")
    if out.is_dir():
        raise ValueError(f"out: expected a file name, got the folder {str(out)!r}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"out: expected a new file, got the existing {str(out)!r} (use --overwrite to replace it)")
    model, _ = load_run(args.run)
    # the samples (drawn in float32, then joined) and the file's bytes: .npy twice as they are, text about
    # 25 characters a value, also twice; sample() checks its own share again
    per_value = 4 * 2 + (8 if SAMPLE_FORMATS[suffix] is None else 50)
    fits_in_memory(n * (8 + per_value * model.features), name="n",
                   what=f"{n:,} samples of {model.features} values written as {suffix}", value=n)
    x = model.sample(n, seed=args.seed).detach().cpu().numpy()
    if SAMPLE_FORMATS[suffix] is None:
        save_numpy(out, x)
    else:
        import io as _io

        import numpy as np

        text = _io.StringIO()
        np.savetxt(text, x, delimiter=SAMPLE_FORMATS[suffix])
        write_text(out, text.getvalue())
    print(f"wrote {n} samples of shape {x.shape} to {out.resolve()}")
    return 0


def _cmd_benchmark(args, rest: list[str]) -> int:
    from .experiments.cli import main as bench_main

    return bench_main(rest)


def build_parser() -> argparse.ArgumentParser:
    from .presets import names

    MODELS = [name for name in names() if not name.startswith("image-")]  # the same list as runs.MODELS

    p = argparse.ArgumentParser(prog="vqflows", description="VQ-Flows: exact densities on data manifolds.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list the built-in datasets with their oracle E[log p]")
    d.add_argument("--json", action="store_true")

    t = sub.add_parser("train", help="train one model into a run folder")
    t.add_argument("--dataset", default="helix", help="a built-in name or a .npy/.csv file of points (N, D)")
    t.add_argument("--model", default="vq-maf", choices=MODELS)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<model>-<seed>)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small flows gain nothing from more; 0: torch's default)")
    t.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="config overrides, e.g. charts=16 lr=0.002 (may be repeated)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (finished or not)")
    t.add_argument("--resume", action="store_true",
                   help="continue the unfinished (e.g. interrupted) run in --out with the same settings")
    t.add_argument("--json", action="store_true", help="print one JSON object with the metrics")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="re-evaluate a run folder")
    e.add_argument("run")
    e.add_argument("--json", action="store_true")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=10_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.npy", help="file ending in .npy, .csv or .txt (text)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    sub.add_parser("benchmark", help="reproduce the paper's tables and figures (see `vqflows benchmark -h`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "benchmark":
        return _cmd_benchmark(None, argv[1:])
    args = build_parser().parse_args(argv)
    handler = {"datasets": _cmd_datasets, "train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample}
    from .training import TrainingError

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"vqflows {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            return handler[args.command](args)
        except (ValueError, TrainingError) as e:
            # one line: the messages name what was expected and what came
            return _error(args.command, str(e))
        except OSError as e:  # a full disk, a folder that cannot be written, ...: what the system said, and where
            where = f" ({e.filename})" if e.filename else ""
            return _error(args.command, f"could not write or read a file: {e.strerror or e}{where}; no file was "
                                        f"left half-written")
        except MemoryError:
            return _error(args.command, "out of memory; use fewer points (--set n=...) or fewer samples (-n)")


def _error(command: str, message: str) -> int:
    print(f"vqflows {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
