"""Atomic file writes and the per-run lock: nothing the pipeline writes is ever half-written.

Every writer goes through a temp file in the same folder and `os.replace`, which is atomic on
POSIX, so a crash leaves either the old file or the new one. Temp files carry the writer's pid
(`.<name>.pid<pid>.<random>.tmp`), so ones left by a killed process can be swept safely.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.console import Log
from pipeline.errors import UserError


def _explain(path: Path, exc: OSError) -> UserError:
    """Turn a write failure into one line with what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"{path}: disk full while writing; free some space and run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        return UserError(f"{path}: cannot write here ({exc.strerror}); check the folder's permissions")
    return UserError(f"{path}: could not write ({exc.strerror})")


def _temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """Create an empty temp file next to `path`, named with this process's pid."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=suffix,
                                dir=path.parent)
    except OSError as exc:
        raise _explain(path, exc) from None


def _publish(path: Path, fill: Callable[[int, str], None], suffix: str = ".tmp") -> None:
    """Let `fill(fd, tmp)` write a temp file beside `path`, then rename it into place.

    Any failure removes the temp file; an OSError becomes one line saying what to do.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path, suffix)
    try:
        fill(fd, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _explain(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temp file beside `path`, then move it into place."""
    def fill(fd: int, tmp: str) -> None:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _publish(path, fill)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically."""
    write_atomic(path, lambda f: f.write(data))


def write_png(path: Path, figure: Any, **savefig: Any) -> Path:
    """Render a matplotlib figure to PNG (white background) and write it atomically."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", facecolor="white", **savefig)
    write_bytes(path, buf.getvalue())
    return path


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
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
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


def save_keras(model: Any, path: Path) -> None:
    """Save a Keras model atomically (Keras needs a `.keras` name, so the temp file gets one)."""
    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        model.save(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())

    _publish(path, fill, suffix=".tmp.keras")


_TEMP_NAME = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp(\.keras)?$")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files under `folder` whose writer is no longer running; return them."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp*"):
        m = _TEMP_NAME.match(tmp.name)
        if m and tmp.is_file() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed fold worker is a zombie until init reaps it, which can take seconds: it writes
    # nothing more, so its temp files are already stale.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _missing_parents(folder: Path) -> list[Path]:
    """`folder` and those of its ancestors that do not exist yet, deepest first."""
    out = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        out.append(p)
    return out


def _read_owner(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "0")
    except (OSError, ValueError):
        return 0


def _acquire(lock: Path, run_dir: Path) -> int:
    """Open and flock `lock`; return the held descriptor, or raise if a live process holds it."""
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise UserError(f"{run_dir}: another command (pid {owner or '?'}) is using this run; "
                            "wait for it to finish or stop it first") from None
        except OSError:
            os.close(fd)
            raise
        # The previous holder may have deleted the file between our open and flock: retry.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: Path, log: Log | None = None) -> Iterator[None]:
    """Hold `run_dir/.lock` (owner's pid) so two commands never write one run at once.

    Not `filelock`: it does not record the holder's pid (which the refusal names), and on Unix it
    leaves its lock file behind, where this lock must leave nothing in the run folder.

    The lock is an flock on that file, which the kernel drops when its holder dies (even on
    SIGKILL), so a lock file left by a dead process is taken over, never obeyed. Folders this
    creates are removed again if nothing was written into them (e.g. the input was bad).
    """
    run_dir = Path(run_dir)
    lock = run_dir / ".lock"
    created = _missing_parents(run_dir)
    fd = -1
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock, run_dir)
        previous = _read_owner(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except (OSError, UserError) as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
        _remove_empty(created)
        if isinstance(exc, UserError):
            raise
        raise _explain(lock, exc) from None
    try:
        if previous and previous != os.getpid() and log is not None:
            log(f"{run_dir.name}: took over the lock left by pid {previous}, which is no longer running")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the given folders (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
