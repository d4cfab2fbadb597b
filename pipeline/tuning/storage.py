"""Where a tuning study lives: its Optuna storage (SQLite by default, or any SQLAlchemy URL such
as the PostgreSQL database machines share), the locks workers claim trials under, and the reader
of a study saved in its folder (for the report).

    storage = open_storage(default_storage(StudyFiles.of(runs, "s1")))
    with claim_for(url, "s1", files).held(): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.runfiles import read_optional
from pipeline.tuning.studyfiles import StudyFiles

if TYPE_CHECKING:
    import optuna

DEFAULT_HEARTBEAT = 10  # seconds between a running trial's heartbeats
GRACE = 4  # a trial with no heartbeat for GRACE × heartbeat seconds is declared dead
SQLITE_TIMEOUT = 60.0  # seconds a writer waits for SQLite's lock (measured: scripts/results/README.md)


def default_storage(files: StudyFiles) -> str:
    """SQLite file in the study's folder: survives restarts, needs no server."""
    return f"sqlite:///{files.db}"


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so trials of dead workers are failed and retried."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # Concurrent writers wait for SQLite's lock instead of failing at once (default 5 s).
        kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Machines that open a new PostgreSQL database at once would race creating Optuna's tables.
    schema = AdvisoryLock(url, "schema") if is_postgres(url) else None
    try:
        with warnings.catch_warnings(), (schema.held() if schema else contextlib.nullcontext()):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=heartbeat,
                                              grace_period=GRACE * heartbeat)
    except Exception as exc:
        if isinstance(exc, ImportError) or "DB access module" in str(exc):
            # SQLAlchemy's default driver for postgresql:// is psycopg 3.
            hint = (" (pip install 'psycopg[binary]', or use postgresql+psycopg2:// with "
                    "psycopg2-binary)") if url.startswith("postgres") else ""
            raise UserError(f"--storage {masked(url)}: the database driver for "
                            f"'{url.split(':', 1)[0]}' is not installed{hint}") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--storage {masked(url)}: cannot open ({first}); expected an SQLAlchemy "
                        "URL such as sqlite:///path/study.db or "
                        "postgresql://user:password@host/dbname") from None


def is_postgres(url: str) -> bool:
    """Whether an SQLAlchemy URL names a PostgreSQL database (any driver)."""
    return url.split(":", 1)[0].split("+", 1)[0] == "postgresql"


def masked(url: str) -> str:
    """The URL with any password hidden, for messages and saved files."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # a mistyped URL make_url cannot parse may still hold a password
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
    # Rendered again only to hide a password: rendering would percent-encode a Windows path's ':'.
    return parsed.render_as_string(hide_password=True) if parsed.password is not None else url


class _Lock:
    """A lock with acquire/release, also usable as `with lock.held(): …`."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock for the duration of a `with` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


class AdvisoryLock(_Lock):
    """A PostgreSQL advisory lock named `name`: one holder at a time among all the processes of
    every machine using the database. It lives on its own connection, opened by acquire() and
    closed by release(); the server also ends it when its process dies (at once when killed,
    within ~30 s of TCP keepalives when its machine dies), and that releases the lock."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha1(f"digits-tune:{name}".encode()).digest()[:8],
                                  "big", signed=True)
        self._conn: Any = None

    def acquire(self) -> None:
        """Connect and block until this process holds the lock (a no-op when held)."""
        import sqlalchemy

        if self._conn is not None:
            return
        engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            for setting, value in (("idle", 10), ("interval", 5), ("count", 3)):
                conn.exec_driver_sql(f"SET tcp_keepalives_{setting} = {value}")
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        """Unlock and disconnect (a no-op when not held)."""
        import sqlalchemy

        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection has lost the lock already: closing is all that is left.
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            conn.close()


class FileClaim(_Lock):
    """A lock held from counting the trials until the next trial exists in the storage, so
    workers never start more trials than the target. This one is a file lock shared by one
    machine's workers: enough for SQLite, whose database is a file on that machine. A bare flock,
    as `files.run_lock` takes: `filelock` would save a dozen lines for one more dependency."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (a no-op when not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


Claim = FileClaim | AdvisoryLock  # held from counting the trials until the next one exists


def claim_for(url: str, study: str, files: StudyFiles) -> Claim:
    """A study's claim: across machines for PostgreSQL, per machine for any other storage."""
    if is_postgres(url):
        return AdvisoryLock(url, f"claim:{study}")
    return FileClaim(files.claim_lock)



# --- a study saved in its folder ------------------------------------------------------------

def open_saved_study(files: StudyFiles, name: str) -> optuna.Study | None:
    """The study in its folder's study.db (by name, else its only study), or None without one.

    A study tuned with --storage keeps its trials in that database, which best_params.json names
    (password hidden): that raises UserError naming it, as a reader of saved studies connects to
    no database. Nothing else in the folder (worker-<i>.log, …) is taken for a storage."""
    if not files.db.is_file():
        recorded = (read_optional(files.best_params) or {}).get("storage")
        if recorded and recorded != default_storage(files):
            raise UserError(f"not opened: its trials are in {recorded} (its --storage), "
                            f"not in {files.root}")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna imports tqdm.auto, which warns in Jupyter
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for study_name in (name, None):
        try:
            return optuna.load_study(study_name=study_name, storage=default_storage(files))
        except (KeyError, ValueError):
            continue
    return None
