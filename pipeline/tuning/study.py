"""A tuning study's settings, its storage, and the tally of its trials: what `tune`, its report
and `train --study` share.

    settings = Settings(study="s1", storage=default_storage(runs, "s1"), paths=paths, base=cfg,
                        pinned={})
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, Paths, check_name, keys_with
from pipeline.errors import UserError
from pipeline.files import read_json

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

MAX_RETRIES = 2  # re-runs of a trial whose worker died, before it counts as failed


# --- settings -------------------------------------------------------------------------------

PRUNERS = ("median", "hyperband", "none")
# Pinned keys that do not change what trials learn: a study may resume with other values.
EXECUTION_KEYS = keys_with("prediction", "source", "execution", "ensemble")
DEFAULT_HEARTBEAT = 10  # seconds between a running trial's heartbeats
GRACE = 4  # a trial with no heartbeat for GRACE × heartbeat seconds is declared dead
SQLITE_TIMEOUT = 60.0  # seconds a writer waits for SQLite's lock (measured: scripts/results/README.md)


@dataclass(frozen=True)
class Budget:
    """What one study may spend, and how trials are cut short."""

    trials: int = 30  # target total number of trials in the study
    timeout: float = 1800.0  # seconds; then the running trial stops and no new one starts
    tune_folds: int = 1  # folds of the saved split each trial trains (1 … folds)
    min_epochs: int = 3
    max_epochs: int = 6
    subsample: float = 0.25  # fraction of each fold's training rows a trial uses
    pruner: str = "median"
    startup_trials: int = 5  # random trials before TPE models the space, and before pruning
    heartbeat: int = DEFAULT_HEARTBEAT

    def check(self, folds: int, pinned: dict[str, Any]) -> None:
        """Reject budgets no study can run, naming the flag."""
        rules = [
            (self.trials >= 1, f"--trials {self.trials}: must be at least 1"),
            (self.timeout > 0, f"--timeout {self.timeout:g}: must be a positive number of seconds"),
            (1 <= self.tune_folds <= folds,
             f"--tune-folds {self.tune_folds}: must be between 1 and the config's folds ({folds})"),
            (1 <= self.min_epochs <= self.max_epochs,
             f"--min-epochs {self.min_epochs} / --max-epochs {self.max_epochs}: need 1 <= min <= max"),
            (0 < self.subsample <= 1, f"--subsample {self.subsample:g}: must be in (0, 1]"),
            (self.pruner in PRUNERS, f"--pruner {self.pruner!r}: choose from {', '.join(PRUNERS)}"),
            (self.startup_trials >= 0, f"--startup-trials {self.startup_trials}: must be >= 0"),
            (self.heartbeat >= 1, f"--heartbeat {self.heartbeat}: must be at least 1 second"),
            ("subsample" not in pinned, "subsample: set the tuning subsample with --subsample, "
                                        "not --set/--config"),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)

    def epochs(self, pinned: dict[str, Any]) -> tuple[int, int]:
        """The searched epoch range (a single value when epochs is pinned)."""
        if "epochs" in pinned:
            return int(pinned["epochs"]), int(pinned["epochs"])
        return self.min_epochs, self.max_epochs


@dataclass(frozen=True)
class Settings:
    """Everything a tuning worker needs; picklable, so local workers get it as is."""

    study: str
    storage: str  # SQLAlchemy URL
    paths: Paths
    base: Config  # profile + config file + --set: the config every trial starts from
    pinned: dict[str, Any]  # the keys given by --config/--set, excluded from the search
    budget: Budget = field(default_factory=Budget)
    workers: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()  # params to try first (after the baseline)

    @property
    def study_dir(self) -> Path:
        """The folder holding this study's outputs (and its SQLite file by default)."""
        return study_dir(self.paths.runs, self.study)


def study_dir(runs_dir: Path, study: str) -> Path:
    """`runs/tune/<study>`."""
    return Path(runs_dir) / "tune" / study


# --- storage --------------------------------------------------------------------------------

def default_storage(runs_dir: Path, study: str) -> str:
    """SQLite file in the study's folder: survives restarts, needs no server."""
    return f"sqlite:///{study_dir(runs_dir, study) / 'study.db'}"


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


def claim_for(settings: Settings) -> Claim:
    """The study's claim: across machines for PostgreSQL, per machine for any other storage."""
    if is_postgres(settings.storage):
        return AdvisoryLock(settings.storage, f"claim:{settings.study}")
    return FileClaim(settings.study_dir / ".claim.lock")


def make_sampler(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    # constant_liar: concurrent workers see running trials as bad, so they explore elsewhere.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                      multivariate=True, group=True, constant_liar=True)


def _pruner(budget: Budget, epochs_max: int) -> optuna.pruners.BasePruner:
    import optuna

    if budget.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=budget.startup_trials,
                                           n_warmup_steps=1)
    if budget.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1,
                                              max_resource=budget.tune_folds * epochs_max,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(settings: Settings) -> optuna.Study:
    """The study in its storage (created if new), with the seeded sampler and the pruner."""
    import optuna

    storage = open_storage(settings.storage, settings.budget.heartbeat)
    epochs = settings.budget.epochs(settings.pinned)
    return optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                               load_if_exists=True,
                               sampler=make_sampler(settings.base.seed,
                                                settings.budget.startup_trials),
                               pruner=_pruner(settings.budget, epochs[1]))


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


def _interrupted(t: FrozenTrial) -> bool:
    """A failed trial whose parameters are not to blame: Ctrl-C, or a worker that died."""
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and "error" not in t.user_attrs


@dataclass
class Tally:
    """The study's trials sorted into what counts toward the target and what must be re-run."""

    counted: list[FrozenTrial]
    retry: list[FrozenTrial]  # interrupted trials to run again with the same parameters
    superseded: list[FrozenTrial]  # interrupted trials already re-run

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> Tally:
        """Sort a study's trials."""
        retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        counted, retry, superseded = [], [], []
        for t in trials:
            if _interrupted(t) and t.number in retried:
                superseded.append(t)
            elif _interrupted(t) and t.user_attrs.get("retries", 0) < MAX_RETRIES:
                retry.append(t)
            else:
                counted.append(t)
        return cls(counted, retry, superseded)

    def states(self) -> dict[str, int]:
        """Counts of counted trials by state name."""
        out: dict[str, int] = {}
        for t in self.counted:
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def finished(self) -> list[FrozenTrial]:
        """Counted trials that ended (complete, pruned or failed)."""
        return [t for t in self.counted if t.state.is_finished()]

    def best(self) -> FrozenTrial | None:
        """The complete trial with the highest value (the earliest on ties)."""
        from optuna.trial import TrialState

        done = [t for t in self.counted if t.state == TrialState.COMPLETE and t.value is not None]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None


# --- using a study's result -----------------------------------------------------------------

def load_best_params(runs_dir: Path, study: str) -> dict[str, Any]:
    """The best_params.json record of a finished study, checked."""
    check_name(study, "--study")
    path = study_dir(runs_dir, study) / "best_params.json"
    if not path.is_file():
        raise UserError(f"--study {study!r}: no {path} (unknown study, or no trial completed); "
                        f"run `make tune STUDY={study}` first")
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise UserError(f"{path}: not a best_params.json written by `tune`; re-run `make tune`")
    return record


def study_storage(study_dir: Path) -> Any | None:
    """An Optuna storage for the study files in `study_dir` (SQLite or journal), or None."""
    for pattern in ("*.db", "*.sqlite", "*.sqlite3"):
        for path in sorted(study_dir.glob(pattern)):
            return f"sqlite:///{path.resolve()}"
    for pattern in ("*.journal", "*.jsonl", "*.log"):
        for path in sorted(study_dir.glob(pattern)):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            return JournalStorage(JournalFileBackend(str(path)))
    return None


def open_saved_study(study_dir: Path, name: str) -> Any | None:
    """The Optuna study stored under `study_dir` (by name, else its only study), or None."""
    storage = study_storage(study_dir) if study_dir.is_dir() else None
    if storage is None:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna imports tqdm.auto, which warns in Jupyter
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for study_name in (name, None):
        try:
            return optuna.load_study(study_name=study_name, storage=storage)
        except (KeyError, ValueError):
            continue
    return None
