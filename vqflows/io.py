"""Files and settings: atomic writes, ``key=value`` overrides of typed configs, the machine, run-folder claims.

Every file a run or a study leaves is written here, atomically: the bytes go to a temporary file in
the same folder, which then replaces the target with :func:`os.replace`, so a reader (or a rerun
after a crash) sees either the old file or the new one, never half of one.

Example:
    >>> import dataclasses, tempfile
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     lr: float = 1e-3
    ...     hidden: tuple[int, ...] = (64, 64)
    ...     name: str | None = None
    >>> apply_overrides(Config(), ["lr=2e-3", "hidden=32,32", "name=null"])
    Config(lr=0.002, hidden=(32, 32), name=None)
    >>> folder = tempfile.mkdtemp()
    >>> path = write_json(f"{folder}/metrics.json", {"nll": 1.5})
    >>> read_json(path)
    {'nll': 1.5}
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import socket
import tempfile
import threading
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "apply_overrides",
    "claim",
    "file_mode",
    "hardware",
    "parse_overrides",
    "read_json",
    "save_numpy",
    "save_torch",
    "write_bytes",
    "write_json",
    "write_text",
]

# ----------------------------------------------------------------------------------------- atomic writes


_UMASK = threading.Lock()


def file_mode() -> int:
    """The mode a new file gets from :func:`open`: ``0o666`` less the process's umask (e.g. ``0o644``)."""
    try:  # read without changing it (Linux)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def temp_file(folder: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """:func:`tempfile.mkstemp` in ``folder``, with the mode of :func:`file_mode` rather than ``0o600``,
    so that the file renamed into place reads as any file the user makes there."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        else:
            os.chmod(tmp, file_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); returns the path.

    The file gets the mode a plain :func:`open` would give it (``0o666`` less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name: several processes may write the same file (a cache entry) at once
    fd, tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def _plain(o: Any) -> Any:
    """JSON's view of numpy scalars and arrays, tensors, paths, tuples and non-finite floats (``null``)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return _plain(o.item())
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _plain(dataclasses.asdict(o))
    if type(o).__module__ == "torch" and hasattr(o, "tolist"):
        return _plain(o.tolist())
    return o


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically; NaN and ±inf become ``null`` (strict JSON), numpy values plain numbers."""
    return write_text(path, json.dumps(_plain(obj), indent=indent, allow_nan=False, default=str))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def save_numpy(path: str | os.PathLike, array: Any) -> Path:
    """:func:`numpy.save` atomically (``path`` as given: no ``.npy`` is appended)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buffer.getvalue())


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`torch.save` atomically."""
    import torch  # deferred: this module is torch-free for the command line's checks

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------- overrides


def parse_overrides(items: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``["key=value", ...]`` (or a dict) as ``(key, value)`` pairs in order; a malformed item raises ``ValueError``."""
    if isinstance(items, Mapping):
        return list(items.items())
    if isinstance(items, str):
        items = [items]
    pairs = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs


def apply_overrides(config: Any, overrides: Sequence[str] | Mapping[str, Any]) -> Any:
    """A copy of the dataclass ``config`` with ``key=value`` overrides, coerced to the fields' declared types.

    Strings (from a command line) are read as JSON, except for ``str`` fields, which take the text
    as it is (``null`` gives ``None`` where the field allows it). Lists and tuples also take
    ``a,b,c`` or a single value; ``bool`` takes ``true``/``false``; an ``int`` is accepted for a
    ``float``. A key given more than once accumulates: list and tuple values are concatenated,
    dict values merged (``options.key=value`` sets one entry of a dict field); any other field keeps
    the last value. The result is built with :func:`dataclasses.replace`, so the config's own checks
    (``__post_init__``) run on it.

    Raises ``ValueError`` for an unknown key (``"override: expected one of ..., got 'x'"``) or a
    value of the wrong type (``"lr: expected float, got 'fast'"``).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config: expected a dataclass instance, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(config) if f.init}
    hints = typing.get_type_hints(type(config))
    changes: dict[str, Any] = {}
    for key, raw in parse_overrides(overrides):
        name, _, entry = key.partition(".")
        if name not in fields:
            raise ValueError(f"override: expected one of {', '.join(sorted(fields))}, got {key!r}")
        kind = hints[name]
        if entry:
            if _origin(kind) is not dict:
                raise ValueError(f"{key}: expected a dict field for '{name}.<key>', got {name} of type {_show(kind)}")
            value = {entry: _json(key, raw) if isinstance(raw, str) else raw}
        else:
            value = _coerce(name, raw, kind)
        if name in changes and isinstance(value, (list, tuple, dict)) and type(value) is type(changes[name]):
            value = {**changes[name], **value} if isinstance(value, dict) else changes[name] + value
        elif entry:
            value = {**(getattr(config, name) or {}), **value}
        changes[name] = value
    return dataclasses.replace(config, **changes)


def _origin(kind: Any) -> Any:
    origin = typing.get_origin(kind)
    return origin if origin is not None else kind


def _show(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: left to the type check, which names the field


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as the type ``kind`` (a type hint), or ``ValueError`` naming ``key``."""
    origin, args = _origin(kind), typing.get_args(kind)
    if kind is Any:
        return _json(key, value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none"))):
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in sorted(options, key=lambda a: _origin(a) is str):  # text is the fallback reading
            try:
                return _coerce(key, value, option)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    if origin in (tuple, list):
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
        if isinstance(value, str):
            parsed = _json(key, value)
            value = parsed if not isinstance(parsed, str) else [v.strip() for v in value.strip("[]() ").split(",")
                                                                   if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return origin(_coerce(key, v, item) for v in value)
    if origin is dict:
        value = _json(key, value) if isinstance(value, str) else value
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a JSON object, got {value!r}")
        return dict(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected str, got {value!r}")
        return value
    if isinstance(value, str):
        if kind is bool and value.lower() in ("true", "false"):
            return value.lower() == "true"
        value = _json(key, value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(kind, type) or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {_show(kind)}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------- hardware


def hardware() -> dict[str, Any]:
    """The machine and libraries, for reporting timings.

    ``{"platform", "cpu", "cpu_count", "usable_cores", "load_average", "gpu", "python", "torch", "numpy",
    "scikit-learn"}``; ``gpu`` is the CUDA device name or ``None``.
    """
    import sklearn  # deferred: this module is light for the command line's checks
    import torch  # deferred: this module is torch-free for the command line's checks

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


# --------------------------------------------------------------------------------------------- claims

#: Name of the lock file that :func:`claim` creates in a folder.
LOCK = ".lock"


@contextmanager
def claim(folder: str | os.PathLike, *, name: str = "folder") -> Iterator[Path]:
    """Hold ``folder`` for this process: exclusive creation of ``folder/.lock``, removed on exit.

    The lock file names its holder (host, process id, start time). A second claim raises
    ``ValueError`` naming the holder, unless the holder is a process of this host that no longer
    exists (killed before it could release the claim): that stale claim is taken over.

    Example:
        >>> import tempfile
        >>> with claim(tempfile.mkdtemp()) as lock:
        ...     lock.name
        '.lock'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(path, {})
            if _alive(holder, path) or not _take_over(path, holder):
                raise ValueError(f"{name}: expected a folder no other process is writing, got {str(folder)!r} locked by "
                                 f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                                 f"(remove {path} if that process is gone)") from None
            continue
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
        except BaseException:  # e.g. a full disk: no claim is left behind
            path.unlink(missing_ok=True)
            raise
        break
    else:
        raise ValueError(f"{name}: expected to claim {str(folder)!r}, got a claim that keeps coming back")
    try:
        yield path
    finally:
        if read_json(path, {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _take_over(path: Path, holder: Any) -> bool:
    """Move a stale lock aside atomically; ``False`` if another process took it over first (then the
    lock it made is put back), so that two processes taking over one stale lock cannot both win."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else removed it: race for the fresh lock
    if read_json(aside, {}) == holder:
        aside.unlink(missing_ok=True)
        return True
    try:
        os.link(aside, path)
    except OSError:
        pass
    aside.unlink(missing_ok=True)
    return False


def _alive(holder: Mapping[str, Any], path: Path) -> bool:
    """Whether the claim's holder may still run (a holder on another host is assumed alive)."""
    if not holder:  # empty or unreadable: being written right now, or left by a process killed while writing it
        try:
            return time.time() - path.stat().st_mtime < 5.0
        except OSError:
            return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
