"""The table of bad inputs a new user meets, declared once: each row is redone exactly as a user would, and
records what happens and whether that is the right behaviour.

``tests/test_robustness.py`` runs every group of rows and asserts each row; with ``--robustness-table PATH``
the same run writes the table (into ``PATH`` between its table markers, or as the whole file):

    python -m pytest tests/test_robustness.py --robustness-table docs/robustness.md

Python API rows run in the test process on small fitted models; command-line rows run ``python -m vqflows
...`` in a temporary folder with tiny settings (``--epochs 2 --set n=600 charts=4 chart_epochs=2 hidden=16
transforms=2``). Memory rows run in their own process and report its peak resident set size
(``ru_maxrss``). A row is ``| what a user does | command / call | what happens now | right behaviour? |``,
with the exit code and the one-line message (or the result) of every case. Temporary paths show as
``<tmp>``. Nothing outside the temporary folder is written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vqflows

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["charts=4", "chart_epochs=2", "hidden=16", "transforms=2"]
TINY = ["--epochs", "2", "--quiet", "--set", "n=600", *TINY_MODEL]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
#: Row 2 counts scoring as bounded when it adds less than this to the process's peak memory.
GRAPH_FREE_MB = 1024


@dataclass(frozen=True)
class Row:
    """One row of the table, and where it was declared (its group and its place in the group)."""
    what: str
    command: str
    happened: str
    ok: bool
    group: str
    position: int

    @property
    def number(self) -> int:
        return int(self.what.split(".")[0])


class _State:
    """The temporary folder of one run of the table, the rows recorded so far, and the shared run folder."""
    tmp: Path = Path("/nonexistent")
    group: str = ""
    rows: list[Row] = []
    base: Path | None = None


STATE = _State()


def begin(tmp: Path) -> None:
    """Start a run of the table in the (empty) folder ``tmp``."""
    STATE.tmp, STATE.rows, STATE.base = Path(tmp), [], None


def show(text: Any) -> str:
    """``text`` for a table cell: temporary paths as ``<tmp>``, one line, pipes escaped."""
    s = str(text)
    for p in sorted({str(STATE.tmp), str(STATE.tmp.resolve())}, key=len, reverse=True):
        s = s.replace(p, "<tmp>")
    return " ".join(s.split()).replace("|", "\\|")


def row(what: str, command: str, happened: str, ok: bool, group: str | None = None) -> None:
    group = STATE.group if group is None else group
    position = sum(r.group == group for r in STATE.rows)
    STATE.rows.append(Row(what, show(command), show(happened), bool(ok), group, position))


# --------------------------------------------------------------------------------------------- helpers


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def line(self) -> str:
        """The message a user reads: the last line of stderr on failure, of stdout on success."""
        text = self.err if self.rc else (self.out or self.err)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def one_line_error(self) -> bool:
        """Exit code 2 with exactly one line on stderr and no traceback."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        return self.rc == 2 and len(lines) == 1 and "Traceback" not in self.err

    def __str__(self) -> str:
        return f"exit {self.rc}: {self.line}"


def cmd(args: list[str]) -> str:
    return "vqflows " + " ".join(args)


def vqflows_cli(args: list[str], cwd: Path | None = None, timeout: float = 600) -> Result:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vqflows", *args], cwd=cwd or STATE.tmp, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def start(args: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    """A ``vqflows`` process in its own session, with Ctrl-C delivered as in a terminal (SIGINT at its default)."""
    out, err = STATE.tmp / f"{name}.out", STATE.tmp / f"{name}.err"
    p = subprocess.Popen([sys.executable, "-m", "vqflows", *args], cwd=cwd, env=ENV, stdout=out.open("w"),
                         stderr=err.open("w"), start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return p, out, err


def finish(p: subprocess.Popen, out: Path, err: Path, t0: float, timeout: float = 600) -> Result:
    rc = p.wait(timeout=timeout)
    return Result(rc, out.read_text(), err.read_text(), time.perf_counter() - t0)


def wait_for(predicate: Callable[[], bool], p: subprocess.Popen | None = None, timeout: float = 300,
             poll: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if p is not None and p.poll() is not None:
            return predicate()
        time.sleep(poll)
    return False


def attempt(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001 - the row reports whatever a user would see
        return False, e


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def one_line_value_error(e: Any) -> bool:
    return isinstance(e, ValueError) and "\n" not in str(e).strip()


def describe_tensor(t: Any) -> str:
    if not isinstance(t, torch.Tensor):
        return f"{type(t).__name__}"
    finite = bool(torch.isfinite(t).all())
    return f"tensor {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}, {'finite' if finite else 'NOT finite'}"


def sha(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ rows


def api_rows() -> None:
    """Rows 1, 3 and 4: a fitted tiny model used through the Python API."""
    torch.set_num_threads(1)
    splits = vqflows.datasets.load("helix", n=600, seed=0)
    torch.manual_seed(0)
    model = vqflows.build(3, "maf", charts=4, transforms=2, hidden_features=(16, 16))
    vqflows.fit(model, splits.train, splits.val, epochs=2, chart_epochs=2)

    # 1: inputs of other dtypes and containers
    np.random.seed(0)
    x64 = np.random.randn(5, 3)
    ref = model.log_prob(torch.tensor(x64, dtype=torch.float32))
    for label, make, call in (
            ("numpy float64 array", lambda: np.array(x64), "model.log_prob(np.random.randn(5, 3))"),
            ("float64 tensor", lambda: torch.from_numpy(x64),
             "model.log_prob(torch.from_numpy(np.random.randn(5, 3)))"),
            ("Python list", lambda: x64.tolist(), "model.log_prob(np.random.randn(5, 3).tolist())")):
        ok, out = attempt(lambda: model.log_prob(make()))
        if ok:
            diff = float((out - ref).abs().max())
            good = out.shape == (5,) and bool(torch.isfinite(out).all()) and diff < 1e-4
            row(f"1. `log_prob` of a {label}", call, f"{describe_tensor(out)}; max |diff| to float32 input {diff:.1e}",
                good)
        else:
            row(f"1. `log_prob` of a {label}", call, error_text(out), False)

    # 3: overflowing and non-finite points
    for label, call, make in (
            ("points at 1e30", "model.log_prob(np.full((2, 3), 1e30))", lambda: np.full((2, 3), 1e30)),
            ("one row at 1e30 among normal ones", "model.log_prob([[0.1, 0.2, 0.3], [1e30, 0, 0]])",
             lambda: [[0.1, 0.2, 0.3], [1e30, 0, 0]]),
            ("a NaN", "model.log_prob([[float('nan'), 0, 0]])", lambda: [[float("nan"), 0, 0]])):
        ok, out = attempt(lambda: model.log_prob(make()))
        if ok:
            row(f"3. `log_prob` of {label}", call, f"{describe_tensor(out)}: {out.tolist()}", False)
        else:
            row(f"3. `log_prob` of {label}", call, error_text(out), one_line_value_error(out))

    # 4: torch and scikit-learn conventions
    x = splits.test[:7]
    ok, out = attempt(lambda: model(x))
    row("4. call the module, `model(x)`", "model(x)  # x: (7, 3)",
        f"{describe_tensor(out)}, equal to model.log_prob(x): {bool(torch.equal(out, model.log_prob(x)))}"
        if ok else error_text(out), ok and bool(torch.equal(out, model.log_prob(x))))
    ok, out = attempt(lambda: model.sample((2, 3)))
    row("4. `sample` with a torch sample_shape", "model.sample((2, 3))",
        describe_tensor(out) if ok else error_text(out), ok and tuple(out.shape) == (2, 3, 3))

    def rsample_grad() -> tuple[int, int, bool]:
        model.zero_grad(set_to_none=True)
        xs = model.rsample(64, seed=0)
        xs.pow(2).sum().backward()
        params = list(model.flow.parameters())
        got = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
        return got, len(params), xs.requires_grad

    ok, out = attempt(rsample_grad)
    row("4. reparameterised `rsample`; gradient reaches the flow",
        "x = model.rsample(64); x.pow(2).sum().backward()",
        f"requires_grad={out[2]}; {out[0]} of {out[1]} flow parameter tensors get a non-zero gradient" if ok
        else error_text(out), ok and out[0] > 0)

    from sklearn.base import clone

    from vqflows.sklearn import VQFlowDensity

    def clone_fit() -> tuple[bool, float]:
        est = VQFlowDensity(charts=4, epochs=2, chart_epochs=2, hidden=16, transforms=2)
        copy = clone(est)
        same = copy is not est and copy.get_params() == est.get_params()
        return same, copy.fit(splits.train.numpy()).score(splits.test.numpy())

    ok, out = attempt(clone_fit)
    row("4. `sklearn.base.clone` of the estimator (then fit and score the clone)",
        "clone(VQFlowDensity(charts=4, epochs=2, chart_epochs=2, hidden=16, transforms=2)).fit(X).score(X_test)",
        f"clone has equal get_params(): {out[0]}; score {out[1]:.3f} nats/point" if ok else error_text(out),
        ok and out[0] and np.isfinite(out[1]))


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    import vqflows
    torch.set_num_threads(1)
    splits = vqflows.datasets.load("helix", n=10_000, seed=0)
    torch.manual_seed(0)
    model = vqflows.build(features=3, flow="maf", charts=32)
    vqflows.fit(model, splits.train, splits.val, epochs=1, chart_epochs=2)
    x = vqflows.datasets.get("helix").sample(100_000, seed=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if sys.argv[1] == "no_grad":
        with torch.no_grad():
            lp = model.log_prob(x)
    else:
        lp = model.log_prob(x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"training": model.training, "before_mb": before / 1024, "peak_mb": peak / 1024,
                      "seconds": seconds, "shape": list(lp.shape), "finite": bool(torch.isfinite(lp).all()),
                      "requires_grad": lp.requires_grad}))
""")


def memory_rows() -> None:
    """Row 2: scoring 100,000 points with K = 32 after ``vqflows.fit``, in a process of its own per variant."""
    got = {}
    for variant in ("plain", "no_grad"):
        p = subprocess.run([sys.executable, "-c", MEMORY_CHILD, variant], cwd=STATE.tmp, env=ENV, capture_output=True,
                           text=True, timeout=900)
        got[variant] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else p.stderr
    call = ("model = vqflows.build(features=3, flow='maf', charts=32); vqflows.fit(model, train, val, epochs=1, "
            "chart_epochs=2); model.log_prob(x)  # x: 100,000 helix points")
    for variant, shown in (("plain", call), ("no_grad", call.replace("model.log_prob(x)",
                                                                     "with torch.no_grad(): model.log_prob(x)"))):
        r = got[variant]
        if isinstance(r, str):
            row(f"2. `log_prob` on 100,000 points, K = 32 ({variant})", shown, f"child failed: {r.splitlines()[-1]}",
                False)
            continue
        grown = r["peak_mb"] - r["before_mb"]
        text = (f"model.training={r['training']}; peak RSS {r['peak_mb']:.0f} MB ({grown:+.0f} MB over the peak "
                f"before the call; bounded means < {GRAPH_FREE_MB} MB); {r['seconds']:.1f} s; "
                f"shape {tuple(r['shape'])}, finite={r['finite']}, requires_grad={r['requires_grad']}")
        # A kept autograd graph took 15.3 GB for this call (about 150 kB per point); bounded scoring stays far
        # below 1 GB.
        ok = grown < GRAPH_FREE_MB and r["finite"] and not r["requires_grad"] and not r["training"]
        how = "as the README calls it" if variant == "plain" else "under torch.no_grad, for comparison"
        row(f"2. `log_prob` on 100,000 points, K = 32 ({how})", shown, text, ok)


def runs_dir() -> Path:
    """The folder of the command-line rows' run folders."""
    (STATE.tmp / "r").mkdir(exist_ok=True)
    return STATE.tmp / "r"


def data_dir() -> Path:
    """The folder of the rows' data files."""
    (STATE.tmp / "data").mkdir(exist_ok=True)
    return STATE.tmp / "data"


def base_run() -> Path:
    """Row 5: repeated ``--set`` flags accumulate. Its run folder is the one later rows load, evaluate and
    sample from; it is trained once per run of the table."""
    if STATE.base is not None:
        return STATE.base
    base = runs_dir() / "base"
    args = ["train", "--dataset", "helix", "--out", str(base), "--epochs", "2", "--quiet",
            "--set", "n=600", "hidden=16", "transforms=2", "--set", "charts=4", "--set", "chart_epochs=2"]
    r = vqflows_cli(args)
    cfg = read_json(base / "config.json") if (base / "config.json").exists() else {}
    picked = {k: cfg.get(k) for k in ("n", "hidden", "transforms", "charts", "chart_epochs")}
    row("5. several `--set` flags", cmd(args), f"{r}; config.json has {picked}",
        r.rc == 0 and picked == {"n": 600, "hidden": 16, "transforms": 2, "charts": 4, "chart_epochs": 2},
        group="set-flags")
    if r.rc != 0:
        raise RuntimeError(f"row 5's run, which later rows use, failed: {show(r)}")
    STATE.base = base
    return base


def set_flags_rows() -> None:
    """Row 5."""
    base_run()


def two_writers_rows() -> None:
    """Row 6: two writers on one run folder."""
    twin = runs_dir() / "x"
    args = ["train", "--dataset", "helix", "--out", str(twin), "--epochs", "20", "--quiet",
            "--set", "n=4000", *TINY_MODEL]
    t0 = time.perf_counter()
    procs = [start(args, STATE.tmp, f"twin{i}") for i in range(2)]
    results = sorted((finish(*p, t0) for p in procs), key=lambda res: res.rc)
    codes = [res.rc for res in results]
    refused = results[-1]
    ok = codes == [0, 2] and refused.one_line_error and "locked" in refused.line \
        and (twin / "metrics.json").exists() and not (twin / ".lock").exists()
    row("6. two `vqflows train --out r/x` at once", cmd(args) + "  (twice, started together)",
        f"exit codes {codes}; the refused one: {refused.line}; folder: metrics.json "
        f"{'present' if (twin / 'metrics.json').exists() else 'MISSING'}, .lock "
        f"{'left behind' if (twin / '.lock').exists() else 'removed'}", ok)


def weight_files(run: Path) -> list[Path]:
    """Every ``weights.pt`` of a run's model: one, or one per member of the default stacked model."""
    return sorted((run / "model").rglob("weights.pt"))


def first_model(run: Path) -> Path:
    """The folder of the run's (first) single model: ``model/``, or ``model/member-0/`` of an ensemble."""
    return weight_files(run)[0].parent


def weights_sha(run: Path) -> list:
    return [sha(w) for w in weight_files(run)]


def interrupt_rows() -> None:
    """Row 7: Ctrl-C after the first epoch, a plain rerun, a resume, and the resumed run against an
    uninterrupted one."""
    runs = runs_dir()
    out = runs / "int"
    args = ["train", "--dataset", "helix", "--out", str(out), "--epochs", "8", "--quiet",
            "--set", "n=10000", *TINY_MODEL]
    t0 = time.perf_counter()
    p, o, e = start(args, STATE.tmp, "int")
    seen = wait_for(lambda: any(out.glob("checkpoint*.pt")), p)
    if seen:
        p.send_signal(signal.SIGINT)
    r = finish(p, o, e, t0)
    files = sorted(f.name for f in out.iterdir()) if out.exists() else []
    row("7. Ctrl-C after the first epoch", cmd(args) + "  (SIGINT once a checkpoint appears)",
        f"{r}; folder: {', '.join(files)}",
        seen and r.rc == 130 and "resume" in r.line and bool(weight_files(out)) and any(out.glob("checkpoint*.pt"))
        and "Traceback" not in r.err)

    before = weights_sha(out)
    r = vqflows_cli(args)
    row("7. rerun the same command after Ctrl-C", cmd(args),
        f"{r}; weights.pt {'unchanged' if weights_sha(out) == before else 'CHANGED'}",
        r.one_line_error and weights_sha(out) == before and "resume" in r.line)

    r = vqflows_cli([*args, "--resume"])
    files = sorted(f.name for f in out.iterdir())
    row("7. rerun with `--resume`", cmd([*args, "--resume"]), f"{r}; folder: {', '.join(files)}",
        r.rc == 0 and (out / "metrics.json").exists() and not (out / "interrupted.json").exists()
        and not any(out.glob("checkpoint*.pt")))

    full = runs / "full"
    plain = [a if a != str(out) else str(full) for a in args]
    r = vqflows_cli(plain)
    mine, theirs = weight_files(out), weight_files(full) if r.rc == 0 else []
    same = len(mine) == len(theirs) > 0 and all(  # every member's weights
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for a, b in ((torch.load(x, weights_only=True), torch.load(y, weights_only=True)) for x, y in zip(mine, theirs)))
    ma, mb = read_json(out / "metrics.json"), read_json(full / "metrics.json") if r.rc == 0 else {}
    row("7. the resumed run against an uninterrupted one", cmd(plain) + "  (then compare every model/**/weights.pt)",
        f"{r}; every weight tensor bit-identical: {same}; test log-likelihood {ma.get('test_log_likelihood')} "
        f"(resumed) vs {mb.get('test_log_likelihood')} (uninterrupted)", r.rc == 0 and same)


def chart_stage_rows() -> None:
    """Row 8: Ctrl-C while the charts are being fitted."""
    out = runs_dir() / "charts"
    args = ["train", "--dataset", "helix", "--out", str(out), "--epochs", "2", "--quiet",
            "--set", "n=20000", "chart_epochs=200", "hidden=16", "transforms=2"]
    t0 = time.perf_counter()
    p, o, e = start(args, STATE.tmp, "charts")
    seen = wait_for(lambda: (out / "config.json").exists(), p)
    time.sleep(1.0)  # config.json is written just before the chart stage begins
    early = p.poll() is None and not (out / "model").exists()
    p.send_signal(signal.SIGINT)
    r = finish(p, o, e, t0)
    files = sorted(f.name for f in out.iterdir()) if out.exists() else []
    has_weights = bool(weight_files(out)) if out.exists() else False
    says_none = "no weights" in r.line
    row("8. Ctrl-C during the chart stage", cmd(args) + "  (SIGINT 1 s after config.json appears)",
        f"{r}; folder: {', '.join(files)}",
        seen and early and r.rc == 130 and says_none == (not has_weights) and "Traceback" not in r.err)


def benchmark_rows() -> None:
    """Row 9: kill -9 of a running benchmark, then the same command again."""
    import psutil

    def _descendants(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _alive(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    out = STATE.tmp / "bench"
    args = ["benchmark", "--table", "1", "--datasets", "helix", "--models", "maf,vq-maf", "--trials", "3",
            "--epochs", "4", "--set", "n=2000", *TINY_MODEL, "--jobs", "2", "--no-figures", "--quiet",
            "--out", str(out)]
    total = 2 * 3

    def finished() -> list[Path]:
        return sorted((out / "runs").glob("*/*/*/metrics.json"))

    p, o, e = start(args, STATE.tmp, "bench")
    seen = wait_for(lambda: len(finished()) >= 1, p)
    children = _descendants(p.pid)
    names = sorted({c.name() for c in children if _alive(c)})
    p.send_signal(signal.SIGKILL)
    p.wait()
    t_kill = time.perf_counter()
    gone = wait_for(lambda: not any(_alive(c) for c in children), timeout=10, poll=0.05)
    gone_after = time.perf_counter() - t_kill
    left = [c.pid for c in children if _alive(c)]
    done_before = len(finished())
    row("9. kill -9 of `vqflows benchmark --jobs 2`",
        cmd(args) + "  (SIGKILL to the driver once a run has finished)",
        f"{len(children)} child process(es) before the kill ({', '.join(names)}); "
        + (f"all gone {gone_after:.1f} s after it" if gone else f"STILL ALIVE after 10 s: pids {left}")
        + f"; {done_before} of {total} runs finished",
        seen and p.returncode == -signal.SIGKILL and gone and len(children) >= 2 and done_before < total)
    for c in children:  # nothing of this script's making may outlive it
        if _alive(c):
            c.kill()

    r = vqflows_cli(args)
    summary = next((ln for ln in (r.out + r.err).splitlines() if "already finished" in ln), r.line)
    trained = int(summary.split()[0]) if summary.split() and summary.split()[0].isdigit() else -1
    row("9. rerun the killed benchmark", cmd(args),
        f"exit {r.rc}: {summary}; {len(finished())} of {total} runs now finished",
        r.rc == 0 and trained == total - done_before and len(finished()) == total)


def bad_file_rows() -> None:
    """Row 10: broken files and arguments."""
    runs, base, data = runs_dir(), base_run(), data_dir()
    (data / "empty.npy").write_bytes(b"")
    np.save(data / "no-rows.npy", np.zeros((0, 3), dtype=np.float32))
    for name, label in (("empty.npy", "an empty (0-byte) `.npy`"), ("no-rows.npy", "a `.npy` holding a (0, 3) array")):
        args = ["train", "--dataset", str(data / name), "--out", str(runs / f"bad-{name}"), *TINY]
        r = vqflows_cli(args)
        row(f"10. train on {label}", cmd(args), str(r), r.one_line_error)

    def broken_copy(name: str, damage: Callable[[Path], None]) -> Path:
        folder = runs / name
        shutil.copytree(base, folder)
        damage(folder)
        return folder

    def truncate(folder: Path) -> None:
        w = weight_files(folder)[0]
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    def unknown_run_key(folder: Path) -> None:
        cfg = read_json(folder / "config.json")
        (folder / "config.json").write_text(json.dumps({**cfg, "colour": "blue"}))

    def unknown_model_key(folder: Path) -> None:
        cfg = read_json(first_model(folder) / "config.json")
        cfg["args"]["colour"] = "blue"
        (first_model(folder) / "config.json").write_text(json.dumps(cfg))

    for name, label, damage in (
            ("truncated", "a truncated `model/member-0/weights.pt`", truncate),
            ("empty-weights", "an empty `model/member-0/weights.pt`", lambda f: weight_files(f)[0].write_bytes(b"")),
            ("unknown-key", "an unknown key in the run's `config.json`", unknown_run_key),
            ("unknown-model-key", "an unknown key in `model/member-0/config.json`", unknown_model_key)):
        folder = broken_copy(name, damage)
        before = {f: sha(f) for f in folder.rglob("*") if f.is_file()}
        r = vqflows_cli(["evaluate", str(folder)])
        kept = before == {f: sha(f) for f in folder.rglob("*") if f.is_file()}
        row(f"10. evaluate a run with {label}", cmd(["evaluate", str(folder)]),
            f"{r}; files {'untouched' if kept else 'CHANGED'}", r.one_line_error and kept)
    folder = runs / "unknown-model-key"
    ok, out = attempt(lambda: vqflows.VQFlow.load(first_model(folder)))
    row("10. `VQFlow.load` of a model folder with an unknown key in `config.json`",
        "vqflows.VQFlow.load('<run>/model/member-0')", error_text(out) if not ok else f"loaded {type(out).__name__}",
        not ok and one_line_value_error(out))

    args = ["train", "--dataset", "helix", "--out", str(runs / "threads"), "--threads", "-2", *TINY]
    r = vqflows_cli(args)
    made = "created" if (runs / "threads").exists() else "not created"
    row("10. `--threads -2`", cmd(args), f"{r}; run folder {made}",
        r.one_line_error and not (runs / "threads").exists())
    args = ["sample", str(base), "-n", "10", "--out", "/nodir/x.npy"]
    r = vqflows_cli(args)
    row("10. `sample --out` into a missing folder", cmd(args), str(r), r.one_line_error)


def divergence_rows() -> None:
    """Row 11: constant data, and learning rates that are too large."""
    runs = runs_dir()
    const = data_dir() / "const.npy"
    np.save(const, np.ones((600, 3), dtype=np.float32))
    args = ["train", "--dataset", str(const), "--out", str(runs / "const"), *TINY]
    r = vqflows_cli(args)
    row("11. train on constant-valued data", cmd(args), str(r),
        r.one_line_error and "learning rate" not in r.line)

    def fit_const() -> Any:
        model = vqflows.build(3, "maf", charts=4, transforms=2, hidden_features=(16, 16))
        return vqflows.fit(model, np.ones((600, 3), dtype=np.float32), epochs=2, chart_epochs=2)

    ok, out = attempt(fit_const)
    row("11. `vqflows.fit` on constant-valued data", "vqflows.fit(model, np.ones((600, 3)), epochs=2, chart_epochs=2)",
        error_text(out) if not ok else "fitted",
        not ok and one_line_value_error(out) and "learning rate" not in str(out))

    for lr in ("100", "1e8"):
        folder = runs / f"lr-{lr}"
        args = ["train", "--dataset", "helix", "--out", str(folder), "--json", *TINY, f"lr={lr}"]
        r = vqflows_cli(args)
        if r.rc == 0:
            m = json.loads(r.out.strip().splitlines()[-1])
            warned = [ln for ln in r.err.splitlines() if ln.strip()]
            happened = (f"exit 0: finished, test log-likelihood {m['test_log_likelihood']:.4g} nats/point; "
                        f"stderr: {warned[-1] if warned else 'empty (no warning)'}")
            ok = bool(np.isfinite(m["test_log_likelihood"]))
        else:
            happened = f"{r}; run folder {'left' if folder.exists() else 'removed'}"
            ok = r.one_line_error and "learning rate" in r.line and "Traceback" not in r.err
        row(f"11. `--set lr={lr}`", cmd(args), happened, ok)


def _splits_of(run: Path) -> tuple[int, int, int]:
    """The split sizes a file-based run trained on, rebuilt from its ``config.json`` and ``data.json``."""
    cfg, data = read_json(run / "config.json"), read_json(run / "data.json")
    s = vqflows.datasets.load(data["path"], n=cfg["n"], seed=cfg["seed"])
    return len(s.train), len(s.val), len(s.test)


def user_file_rows() -> None:
    """Rows 12-14: the user's own points, evaluation from elsewhere and after the file changed, text samples."""
    base = base_run()
    user = STATE.tmp / "user"
    user.mkdir()
    helix = vqflows.datasets.get("helix")
    trained = {}
    for rows in (400, 20_000):
        name = f"my{rows}.npy"
        np.save(user / name, helix.sample(rows, seed=rows).numpy())
        args = ["train", "--dataset", name, "--out", f"r{rows}", "--epochs", "2", "--quiet", "--set", *TINY_MODEL]
        r = vqflows_cli(args, cwd=user)
        run = user / f"r{rows}"
        if r.rc == 0:
            sizes = _splits_of(run)
            data = read_json(run / "data.json")
            cfg = read_json(run / "config.json")
            happened = (f"exit 0; data.json: {data['rows']} rows of {data['path']}; config n={cfg['n']}; "
                        f"train/val/test {sizes[0]:,}/{sizes[1]:,}/{sizes[2]:,}")
            ok = sizes == (rows // 2, rows // 4, rows - rows // 2 - rows // 4) and data["rows"] == rows
        else:
            happened, ok = str(r), False
        trained[rows] = r.rc == 0
        row(f"12. `--dataset my.npy` with {rows:,} rows", f"cd <tmp>/user && {cmd(args)}", happened, ok)

    run = user / "r400"
    elsewhere = STATE.tmp / "elsewhere"
    elsewhere.mkdir()
    args = ["evaluate", str(run), "--json"]
    r = vqflows_cli(args, cwd=elsewhere)
    if r.rc == 0:
        got = json.loads(r.out.strip().splitlines()[-1])["test_log_likelihood"]
        saved = read_json(run / "metrics.json")["test_log_likelihood"]
        happened, ok = f"exit 0: test log-likelihood {got:.6f} (training wrote {saved:.6f})", abs(got - saved) < 1e-6
    else:
        happened, ok = str(r), False
    row("13. `vqflows evaluate` of a file-based run from another directory",
        f"cd <tmp>/elsewhere && {cmd(args)}", happened, ok and trained[400])

    np.save(user / "my400.npy", helix.sample(400, seed=12345).numpy())
    args = ["evaluate", str(run)]
    r = vqflows_cli(args, cwd=elsewhere)
    row("13. `vqflows evaluate` after the data file changed", f"(rewrite my400.npy) {cmd(args)}", str(r),
        r.one_line_error and "changed" in r.line)

    where = STATE.tmp / "samples"
    where.mkdir()
    args = ["sample", str(base), "-n", "50", "--out", "s.txt"]
    r = vqflows_cli(args, cwd=where)
    made = sorted(f.name for f in where.iterdir())
    shape = np.loadtxt(where / "s.txt").shape if (where / "s.txt").exists() else None
    row("14. `sample --out s.txt`", f"cd <tmp>/samples && {cmd(args)}",
        f"{r}; folder holds {made}; np.loadtxt('s.txt').shape = {shape}",
        r.rc == 0 and made == ["s.txt"] and shape == (50, 3) and "s.txt" in r.line)


def value_error_row(what: str, call: str, fn: Callable[[], Any], *fragments: str) -> None:
    """A row whose right behaviour is a one-line ``ValueError`` holding ``fragments``."""
    ok, out = attempt(fn)
    shown = error_text(out) if not ok else f"no error: {describe_tensor(out) if isinstance(out, torch.Tensor) else out}"
    row(what, call, shown, not ok and one_line_value_error(out) and all(f in str(out) for f in fragments))


def cli_error_row(what: str, args: list[str], *fragments: str, gone: Path | None = None,
                  cwd: Path | None = None) -> Result:
    """A command-line row whose right behaviour is exit 2 with one line holding ``fragments`` (and ``gone``
    not created)."""
    r = vqflows_cli(args, cwd=cwd)
    extra = "" if gone is None else f"; {gone.name} {'created' if gone.exists() else 'not created'}"
    row(what, cmd(args), f"{r}{extra}",
        r.one_line_error and all(f in r.line for f in fragments) and (gone is None or not gone.exists()))
    return r


_TINY_ARGS = {"transforms": 2, "hidden_features": (16, 16)}
_QUICK = {"epochs": 2, "chart_epochs": 2}


def _csv_points() -> tuple[np.ndarray, str]:
    points = vqflows.datasets.get("helix").sample(600, seed=3).numpy()
    return points, "\n".join(",".join(f"{v:.6f}" for v in p) for p in points) + "\n"


def input_cli_rows() -> None:
    """Rows 15-19 on the command line: data a model cannot describe, a CSV with a text cell, flow options
    out of range, sizes beyond memory."""
    runs, base, data = runs_dir(), base_run(), data_dir()
    cli_error_row("15. a sphere model on data off the unit sphere",
                  ["train", "--model", "vq-sphere", "--out", str(runs / "sphere"), *TINY],
                  "expected points on the unit sphere", gone=runs / "sphere")

    # 16: degenerate data, at the defaults (32 charts) on the command line
    rng = np.random.default_rng(0)
    np.savetxt(data / "two.csv", np.repeat(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), 150, axis=0), delimiter=",")
    np.savetxt(data / "wide.csv", rng.normal(size=(200, 1000)), delimiter=",", fmt="%.5f")
    for name, label, fragment in (("two.csv", "2 distinct points x 300 rows", "2 distinct point(s)"),
                                  ("wide.csv", "a 200 x 1000 CSV (more columns than rows)", "fewer columns")):
        cli_error_row(f"16. train at the defaults on {label}",
                      ["train", "--dataset", str(data / name), "--out", str(runs / name), "--quiet"], fragment,
                      gone=runs / name)

    # 17: a CSV whose first line has a text cell
    _, body = _csv_points()
    (data / "text-cell.csv").write_text("0.5,n/a,1.0\n" + body)
    cli_error_row("17. a CSV whose first row has one non-numeric cell",
                  ["train", "--dataset", str(data / "text-cell.csv"), "--out", str(runs / "text-cell"), *TINY],
                  "line 1, column 2: expected a number, got 'n/a'", gone=runs / "text-cell")

    # 18: flow options out of range
    cli_error_row("18. `--set flow_options.foo=1`",
                  ["train", "--out", str(runs / "options"), *TINY, "flow_options.foo=1"],
                  "flow_options: expected options of flow 'maf' among", gone=runs / "options")

    # 19: sizes beyond memory, refused before anything is allocated
    cli_error_row("19. `--set n=1000000000`", ["train", "--out", str(runs / "huge"), *TINY, "n=1000000000"],
                  "fits in memory", "GB", gone=runs / "huge")
    cli_error_row("19. `sample -n 2000000000`", ["sample", str(base), "-n", "2000000000", "--out",
                                                   str(STATE.tmp / "huge.npy")], "fits in memory", "GB",
                  gone=STATE.tmp / "huge.npy")


def input_api_rows() -> None:
    """Rows 15-18 and 20 through the Python API: sphere models, degenerate data, CSV files as they come,
    arguments out of range, and calls that used to end in a traceback."""
    import warnings

    from vqflows.sklearn import VQFlowDensity

    data = data_dir()
    helix = vqflows.datasets.load("helix", n=600, seed=0)
    tiny, quick = _TINY_ARGS, _QUICK

    # 15: sphere models and points off the sphere
    sphere = vqflows.build(3, "sphere", charts=4, **tiny)
    value_error_row("15. `log_prob` of a sphere model off the sphere", "vqflows.build(3, 'sphere', charts=4)"
                    ".log_prob(helix_points)", lambda: sphere.log_prob(helix.test), "unit sphere")
    value_error_row("15. `VQFlowDensity(flow='sphere')` on data off the sphere",
                    "VQFlowDensity(flow='sphere', charts=4).fit(helix_points)",
                    lambda: VQFlowDensity(flow="sphere", charts=4, epochs=2).fit(helix.train.numpy()), "unit sphere")
    unit = torch.nn.functional.normalize(torch.randn(600, 3, generator=torch.Generator().manual_seed(0)), dim=-1)

    def sphere_fit() -> str:
        vqflows.fit(sphere, unit[:400], unit[400:], **quick)
        lp = sphere.log_prob(unit[:50] * (1 + 5e-4))
        return f"fitted; log_prob of unit vectors scaled by 1 + 5e-4: {describe_tensor(lp)}"

    ok, out = attempt(sphere_fit)
    row("15. a sphere model on unit vectors (within the stated tolerance 1e-3)",
        "vqflows.fit(sphere, unit_vectors); sphere.log_prob(unit_vectors * (1 + 5e-4))",
        out if ok else error_text(out), ok and "finite" in out and "NOT" not in out)

    # 16: degenerate data
    rng = np.random.default_rng(0)
    value_error_row("16. `fit` with as many charts as points", "vqflows.fit(vqflows.build(3, charts=32), 32_points)",
                    lambda: vqflows.fit(vqflows.build(3, "maf", charts=32, **tiny), helix.train[:32], **quick),
                    "use charts=8 or fewer")
    value_error_row("16. `fit` on data with a constant column",
                    "vqflows.fit(model, np.c_[np.random.randn(300, 2), np.ones(300)])",
                    lambda: vqflows.fit(vqflows.build(3, "maf", charts=4, **tiny),
                                        np.c_[rng.normal(size=(300, 2)), np.ones(300)], **quick),
                    "constant column(s) [2]")

    # 17: CSV files as they come
    points, body = _csv_points()

    def read(name: str, text: str, expect: int, warned: str | None) -> tuple[str, bool]:
        (data / name).write_bytes(text.encode("utf-8"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok, out = attempt(lambda: vqflows.datasets.read_points(data / name))
        said = "; ".join(str(w.message) for w in caught)
        if not ok:
            return error_text(out), False
        good = tuple(out.shape) == (expect, 3) and np.allclose(out[-expect:].numpy(), points[-expect:], atol=1e-5) \
            and ((warned or "") in said if warned else not said)
        return f"{tuple(out.shape)} read{'; warning: ' + said if said else ', no warning'}", good

    for name, label, text, expect, warned in (
            ("numeric-header.csv", "a numeric header row `0,1,2` (pandas' names for unnamed columns)",
             "0,1,2\n" + body, 600, "column numbers"),
            ("bom.csv", "a UTF-8 byte-order mark before the first point", "\ufeff" + body, 600, None),
            ("pandas.csv", "a pandas `to_csv` file with its index column",
             ",a,b,c\n" + "".join(f"{i},{line}\n" for i, line in enumerate(body.splitlines())), 600, "row index")):
        happened, good = read(name, text, expect, warned)
        row(f"17. read {label}", f"vqflows.datasets.read_points('{name}')  # {len(points)} points", happened, good)

    # 18: arguments out of range
    model = vqflows.build(3, "maf", charts=4, **tiny)
    vqflows.fit(model, helix.train, helix.val, **quick)
    value_error_row("18. `decode` with chart -1", "model.decode(torch.zeros(2, 3), -1)",
                    lambda: model.decode(torch.zeros(2, 3), -1), "[0, 4)")
    value_error_row("18. `decode` with chart 99", "model.decode(torch.zeros(2, 3), torch.tensor([99, 0]))",
                    lambda: model.decode(torch.zeros(2, 3), torch.tensor([99, 0])), "[0, 4)")
    masked = np.ma.masked_array(helix.test[:5].numpy(), mask=np.eye(5, 3, dtype=bool))
    value_error_row("18. `log_prob` of a masked array with masked entries", "model.log_prob(np.ma.masked_array(x, mask))",
                    lambda: model.log_prob(masked), "masked")
    here = STATE.tmp / "cwd"
    here.mkdir()
    before = os.getcwd()
    os.chdir(here)
    try:
        ok, out = attempt(lambda: model.save(""))
    finally:
        os.chdir(before)
    row("18. `model.save('')`", "model.save('')", (error_text(out) if not ok else "saved")
        + f"; current folder holds {sorted(p.name for p in here.iterdir())}",
        not ok and one_line_value_error(out) and not any(here.iterdir()))

    # 20: what used to end in a traceback
    saved = model.save(STATE.tmp / "saved")
    for what, call, fn, fragment in (
            ("a meta-device input", "model.log_prob(torch.empty(4, 3, device='meta'))",
             lambda: model.log_prob(torch.empty(4, 3, device="meta")), "meta device"),
            ("`distribution().log_prob` on the wrong width", "model.distribution().log_prob(torch.zeros(5, 2))",
             lambda: model.distribution().log_prob(torch.zeros(5, 2)), "expected shape (..., 3)"),
            ("a float16 model in `fit`", "vqflows.fit(model.half(), x)",
             lambda: vqflows.fit(vqflows.build(3, "maf", charts=4, **tiny).half(), helix.train, **quick), "float16"),
            ("`fit(..., seed=-1)`", "vqflows.fit(model, x, seed=-1)",
             lambda: vqflows.fit(vqflows.build(3, "maf", charts=4, **tiny), helix.train, seed=-1, **quick),
             "seed: expected an integer in [0, 2**32)"),
            ("`VQFlowDensity(threads=-1).fit`", "VQFlowDensity(threads=-1).fit(X)",
             lambda: VQFlowDensity(charts=4, threads=-1, epochs=2).fit(helix.train.numpy()), "threads"),
    ):
        value_error_row(f"20. {what}", call, fn, fragment)
    before = torch.get_num_threads()
    ok, out = attempt(lambda: VQFlowDensity(charts=4, threads=0, epochs=2, transforms=2, hidden=16)
                      .fit(helix.train.numpy()).score(helix.test.numpy()))
    row("20. `VQFlowDensity(threads=0).fit` (0: torch's own setting, as `--threads 0`)",
        "VQFlowDensity(threads=0).fit(X).score(X_test)",
        f"fitted; score {out:.3f} nats/point; torch threads {torch.get_num_threads()} before and after"
        if ok else error_text(out), ok and np.isfinite(out) and torch.get_num_threads() == before)

    def grad_fit() -> str:
        x = helix.train.clone().requires_grad_()
        h = vqflows.fit(vqflows.build(3, "maf", charts=4, **tiny), x, **quick)
        return f"trained {h.epochs} epochs; caller's tensor grad: {x.grad}"

    ok, out = attempt(grad_fit)
    row("20. training data with `requires_grad`", "vqflows.fit(model, x.requires_grad_())",
        out if ok else error_text(out), ok and out.endswith("None"))
    if torch.cuda.is_available():
        ok, out = attempt(lambda: vqflows.VQFlow.load(saved, map_location="cuda"))
        row("20. `VQFlow.load(map_location='cuda')`", "vqflows.VQFlow.load(path, map_location='cuda')",
            f"CUDA present: loaded on {out.log_weights.device}" if ok else error_text(out), ok)
    else:
        value_error_row("20. `VQFlow.load(map_location='cuda')` without CUDA",
                        "vqflows.VQFlow.load(path, map_location='cuda')",
                        lambda: vqflows.VQFlow.load(saved, map_location="cuda"), "no CUDA device")


def traceback_cli_rows() -> None:
    """Row 20 on the command line: ``sample --out`` under a file or naming a folder, and a full disk."""
    base = base_run()
    (STATE.tmp / "afile").write_text("mine")
    cli_error_row("20. `sample --out` under a file", ["sample", str(base), "-n", "5", "--out",
                                                        str(STATE.tmp / "afile" / "s.npy")], "is a file, not a folder")
    (STATE.tmp / "adir.npy").mkdir()
    cli_error_row("20. `sample --out` naming a folder", ["sample", str(base), "-n", "5", "--out",
                                                           str(STATE.tmp / "adir.npy"), "--overwrite"], "got the folder")
    precious = STATE.tmp / "precious.npy"
    precious.write_bytes(b"mine")
    child = textwrap.dedent(f"""
        import errno, os, sys
        from vqflows import cli, io
        real = os.fdopen
        class Full:
            def __init__(self, fd): self.handle = real(fd, "wb")
            def __enter__(self): return self
            def __exit__(self, *exc): self.handle.close()
            def write(self, data): raise OSError(errno.ENOSPC, "No space left on device")
        io.os.fdopen = lambda fd, mode="r", *a, **k: Full(fd) if "w" in mode else real(fd, mode)
        sys.exit(cli.main(["sample", {str(base)!r}, "-n", "5", "--out", {str(precious)!r}, "--overwrite"]))
    """)
    p = subprocess.run([sys.executable, "-c", child], cwd=STATE.tmp, env=ENV, capture_output=True, text=True, timeout=300)
    r = Result(p.returncode, p.stdout, p.stderr, 0.0)
    kept = precious.read_bytes() == b"mine" and not list(STATE.tmp.glob(".precious.npy.*"))
    row("20. a full disk while writing (every write raises ENOSPC)",
        cmd(["sample", str(base), "-n", "5", "--out", str(precious), "--overwrite"]) + "  (writes made to fail)",
        f"{r}; existing file {'unchanged' if kept else 'CHANGED'}", r.one_line_error and kept)



def revision() -> str:
    """The checkout's commit (and whether tracked files differ from it), or where vqflows was imported from."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(Path(vqflows.__file__).parent)
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


#: The groups of rows, in the table's order within a row number: name -> (function, slow). Slow groups
#: start processes (the command line, memory in a fresh process) and are left out of the default test run.
GROUPS: dict[str, tuple[Callable[[], None], bool]] = {
    "api": (api_rows, False),
    "memory": (memory_rows, True),
    "set-flags": (set_flags_rows, True),
    "two-writers": (two_writers_rows, True),
    "interrupt": (interrupt_rows, True),
    "chart-stage": (chart_stage_rows, True),
    "kill-benchmark": (benchmark_rows, True),
    "bad-files": (bad_file_rows, True),
    "divergence": (divergence_rows, True),
    "user-files": (user_file_rows, True),
    "input-cli": (input_cli_rows, True),
    "input-api": (input_api_rows, False),
    "traceback-cli": (traceback_cli_rows, True),
}


def run_group(name: str) -> list[Row]:
    """Run one group of rows (after :func:`begin`) and return its rows; torch's thread count is restored."""
    threads = torch.get_num_threads()
    STATE.group = name
    try:
        GROUPS[name][0]()
    finally:
        torch.set_num_threads(threads)
        STATE.group = ""
    return [r for r in STATE.rows if r.group == name]


def table(rows: list[Row], seconds: float, missing: list[str]) -> str:
    """The Markdown table of ``rows`` in declaration order, the count of right behaviours, the checkout and
    the wall time of the run."""
    order = list(GROUPS)
    lines = ["| what a user does | command / call | what happens now | right behaviour? |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.number, order.index(r.group), r.position)):
        lines.append(f"| {r.what} | `{r.command}` | {r.happened} | {'yes' if r.ok else '**no**'} |")
    bad = sum(not r.ok for r in rows)
    lines += ["", f"{len(rows) - bad} of {len(rows)} cases show the right behaviour" + (f"; {bad} do not." if bad else ".")]
    if missing:
        lines.append(f"Groups not run: {', '.join(missing)}.")
    lines += [f"vqflows from {revision()}.",
              f"Wall time of the rows: {seconds:.0f} s (Python {sys.version.split()[0]}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPU cores)."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- robustness table: begin -->", "<!-- robustness table: end -->"


def write_table(path: Path, text: str) -> None:
    """Put ``text`` between the table markers of ``path``, or make ``path`` the table when it has none."""
    path = Path(path)
    page = path.read_text() if path.exists() else ""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        page = f"{head}{BEGIN}\n\n{text}\n{END}{rest.split(END, 1)[1]}"
    else:
        page = text
    path.write_text(page)
