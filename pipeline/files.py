"""Atomic file writes and the per-run lock: nothing the pipeline writes is ever half-written.

Every writer goes through a temp file in the same folder and `os.replace`, which is atomic on
POSIX, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.errors import UserError


def _explain(path: Path, exc: OSError) -> UserError:
    """Turn a write failure into one line with what to do."""
    if exc.errno == errno.ENOSPC:
        return UserError(f"{path}: disk full while writing; free some space and run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{path}: cannot write here ({exc.strerror}); check the folder's permissions")
    return UserError(f"{path}: could not write ({exc.strerror})")


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temp file beside `path`, then move it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _explain(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _explain(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically."""
    write_atomic(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, indented for people to read."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    """Read a JSON file the pipeline wrote, reporting corruption as a UserError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); delete it and re-run the command") from None


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save one array atomically (`.npy`, no pickles)."""
    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save several arrays atomically (`.npz`, uncompressed for fast loads)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npy(path: Path) -> np.ndarray:
    """Load an array written by `save_npy`, never unpickling."""
    return np.load(path, allow_pickle=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` (owner's pid) so two commands never write one run at once."""
    lock = Path(run_dir) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                raise UserError(f"{run_dir}: another command (pid {owner}) is using this run; "
                                "wait for it to finish or stop it first") from None
            # The owner died without cleaning up: the lock is stale, take it over.
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise UserError(f"{lock}: could not take the run lock; delete the file and retry")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
