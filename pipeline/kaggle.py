"""Talk to Kaggle: download and safely install the competition data, submit a CSV and wait for its score.

    python -m pipeline download [--competition SLUG|URL] [--data DIR] [--force] [--from-zip ZIP]
    python -m pipeline submit [--run NAME | --file CSV] [--message TEXT] [--dry-run] [--no-wait] [--timeout S]

Credentials are the user's usual Kaggle setup (KAGGLE_API_TOKEN, ~/.kaggle/access_token, kaggle.json in
KAGGLE_CONFIG_DIR or ~/.kaggle, KAGGLE_USERNAME + KAGGLE_KEY). The `kaggle` package authenticates, prints
and may `exit(1)` while being imported, so it is imported only inside the functions that contact Kaggle,
after this module has checked that credentials exist. The archive is extracted here, not by the client,
so that unsafe members are refused and nothing reaches the data folder before every check has passed.

Test hook: PIPELINE_KAGGLE_ROWS="TRAIN,TEST" replaces the expected 42,000 and 28,000 rows so the tests
can serve a small archive; the real-size check itself is tested without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.console import Log, warn
from pipeline.data import TEST_COLUMNS, TRAIN_COLUMNS
from pipeline.errors import UserError
from pipeline.files import read_json, write_json
from pipeline.submission import COLUMNS as SUBMISSION_COLUMNS
from pipeline.submission import KAGGLE_ROWS, read_sample_ids, read_submission
from pipeline.config import Paths

TOKEN_PAGE = "https://www.kaggle.com/settings/api"
# File name -> header; rows come from expected_shapes().
HEADERS: dict[str, list[str]] = {
    "sample_submission.csv": SUBMISSION_COLUMNS,
    "test.csv": TEST_COLUMNS,
    "train.csv": TRAIN_COLUMNS,  # last: the file users look for appears only when all are there
}
TRAIN_ROWS, TEST_ROWS = 42_000, KAGGLE_ROWS
ROWS_ENV = "PIPELINE_KAGGLE_ROWS"
# The real archive unpacks to ~123 MB; anything far beyond that is not the competition's data.
MAX_UNPACKED_BYTES = 512 * 2**20
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
_URL = re.compile(r"^(?:https?://)?(?:www\.)?kaggle\.com/(?:c|competitions)/([^/?#]+)", re.IGNORECASE)


# ---------------------------------------------------------------------------- settings and checks


def parse_competition(value: str) -> str:
    """The competition slug from a slug or a kaggle.com competition URL, else a UserError."""
    text = (value or "").strip()
    match = _URL.match(text)
    slug = match.group(1) if match else text
    if not _SLUG.match(slug):
        raise UserError(f"competition {value!r}: not a Kaggle competition slug; use the name from the "
                        "competition's URL, e.g. --competition digit-recognizer or "
                        "--competition https://www.kaggle.com/competitions/digit-recognizer")
    return slug


def expected_shapes() -> dict[str, tuple[int, int]]:
    """(rows, columns) each data file must have: the real competition's, unless the test hook is set."""
    train, test = TRAIN_ROWS, TEST_ROWS
    raw = os.environ.get(ROWS_ENV, "").strip()
    if raw:
        try:
            train, test = (int(part) for part in raw.split(","))
        except ValueError:
            raise UserError(f"{ROWS_ENV}={raw!r}: expected two row counts, e.g. 1257,540") from None
    return {"sample_submission.csv": (test, 2), "test.csv": (test, 784), "train.csv": (train, 785)}


def _csv_shape(path: Path) -> tuple[list[str], int]:
    """Header fields and number of data rows, counted without parsing the cells (fast on 70 MB)."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        rows, last = 0, b"\n"
        for block in iter(lambda: f.read(1 << 20), b""):
            rows += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        rows += 1  # last row without a trailing newline
    return (header.split(",") if header else []), rows


def check_files(folder: Path, shapes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Problems with the competition files in `folder` (empty when all are present with the right shape)."""
    shapes = shapes or expected_shapes()
    problems = []
    for name, (rows, cols) in shapes.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        header, n = _csv_shape(path)
        want = HEADERS[name]
        if len(header) != cols or n != rows:
            problems.append(f"{name} is {n:,} rows × {len(header):,} columns, expected {rows:,} × {cols:,}")
        elif header != want:
            bad = next(i for i, (a, b) in enumerate(zip(header, want)) if a != b)
            problems.append(f"{name} header column {bad + 1} is {header[bad]!r}, expected {want[bad]!r}")
    return problems


# ---------------------------------------------------------------------------- safe extraction


def _member_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path if it is safe to write, None for a folder entry, else a UserError."""
    name = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)
    refuse = f"{archive}: refusing to extract member {name!r}"
    if kind == stat.S_IFLNK:
        raise UserError(f"{refuse}: it is a symbolic link; use the archive downloaded from Kaggle")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UserError(f"{refuse}: absolute path; use the archive downloaded from Kaggle")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise UserError(f"{refuse}: '..' would write outside the data folder; use the archive "
                        "downloaded from Kaggle")
    if info.is_dir():
        return None
    if kind not in (0, stat.S_IFREG):
        raise UserError(f"{refuse}: not a regular file; use the archive downloaded from Kaggle")
    if info.flag_bits & 0x1:
        raise UserError(f"{refuse}: it is encrypted; use the archive downloaded from Kaggle")
    return PurePosixPath(*parts)


def extract_archive(archive: Path, dest: Path, limit: int = MAX_UNPACKED_BYTES) -> list[str]:
    """Extract `archive` into the empty folder `dest` after checking every member; returns the paths."""
    archive = Path(archive)
    corrupt = f"{archive}: corrupt or incomplete zip archive"
    fix = "download it again (python -m pipeline download --force)"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_path(archive, info)) for info in zf.infolist()]
            files = [(info, rel) for info, rel in members if rel is not None]
            total = sum(info.file_size for info, _ in files)
            if total > limit:
                raise UserError(f"{archive}: would unpack to {total / 2**20:,.0f} MB, over the "
                                f"{limit / 2**20:,.0f} MB limit; this is not the competition's archive")
            written = 0
            for info, rel in files:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # Count real bytes too: the sizes in the zip's directory are only claims.
                    for block in iter(lambda: src.read(1 << 20), b""):
                        written += len(block)
                        if written > limit:
                            raise UserError(f"{archive}: unpacks to more than {limit / 2**20:,.0f} MB; "
                                            "this is not the competition's archive")
                        out.write(block)
    except FileNotFoundError:
        raise UserError(f"{archive}: file not found; check the --from-zip path") from None
    except IsADirectoryError:
        raise UserError(f"{archive}: is a folder, expected the competition's .zip file") from None
    except zipfile.BadZipFile as exc:
        raise UserError(f"{corrupt} ({exc}); {fix}") from None
    except (zlib.error, EOFError, NotImplementedError) as exc:
        raise UserError(f"{corrupt} ({type(exc).__name__}: {exc}); {fix}") from None
    return [str(rel) for _, rel in files]


@contextlib.contextmanager
def _staging(data_dir: Path) -> Iterator[Path]:
    """A hidden temp folder inside `data_dir` (same filesystem, so moves are atomic), always removed."""
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".kaggle-", dir=data_dir))
    except OSError as exc:
        raise UserError(f"{data_dir}: cannot create the data folder ({exc.strerror}); "
                        "check the path given to --data") from None
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not ok:
            with contextlib.suppress(OSError):
                data_dir.rmdir()  # only if still empty: we leave no trace of a failed first download


def install_archive(archive: Path, data_dir: Path) -> list[str]:
    """Extract and check a competition archive, then move its files into `data_dir`; returns their names."""
    archive, data_dir = Path(archive), Path(data_dir)
    shapes = expected_shapes()
    with _staging(data_dir) as tmp:
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        names = extract_archive(archive, unpacked)
        problems = check_files(unpacked, shapes)
        if problems:
            found = ", ".join(names) or "nothing"
            raise UserError(f"{archive}: not the digit-recognizer data: {'; '.join(problems)} "
                            f"(the archive holds {found}); nothing was written to {data_dir}")
        for name in shapes:  # train.csv last, see HEADERS
            os.replace(unpacked / name, data_dir / name)
    return list(shapes)


# ---------------------------------------------------------------------------- credentials and client


@dataclass(frozen=True)
class Credentials:
    """Which of the user's Kaggle credentials the client will use (never the secret itself)."""

    source: str  # a file path or environment variable names, for messages


def _config_dir() -> Path:
    """Where the kaggle client looks for kaggle.json (same rules as kaggle 2.x)."""
    env = os.environ.get("KAGGLE_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    home = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return home


def _warn_if_shared(path: Path) -> None:
    """Warn (never fail) when a secret file is readable by group or others."""
    with contextlib.suppress(OSError):
        if os.name != "nt" and path.stat().st_mode & 0o044:
            warn(f"{path} is readable by other users; run `chmod 600 {path}`")


def find_credentials() -> Credentials:
    """The credentials the kaggle client will use, in its order, or a UserError saying how to add some."""
    token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        if Path(token).expanduser().is_file():
            return Credentials(f"{token} (KAGGLE_API_TOKEN)")
        return Credentials("KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text(errors="replace").strip():
            _warn_if_shared(path)
            return Credentials(str(path))
    config = _config_dir() / "kaggle.json"
    stored: dict[str, Any] = {}
    if config.is_file():
        _warn_if_shared(config)
        try:
            stored = json.loads(config.read_text(errors="replace") or "{}")
        except json.JSONDecodeError:
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
    user = os.environ.get("KAGGLE_USERNAME") or stored.get("username")
    key = os.environ.get("KAGGLE_KEY") or stored.get("key")
    if user and key:
        if "KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ:
            return Credentials("KAGGLE_USERNAME/KAGGLE_KEY")
        return Credentials(str(config))
    if (Path.home() / ".kaggle" / "credentials.json").is_file():  # `kaggle auth login` (OAuth)
        return Credentials(str(Path.home() / ".kaggle" / "credentials.json"))
    if config.is_file():
        raise UserError(f"{config}: not a valid kaggle.json (needs \"username\" and \"key\"); create a new "
                        f"token on {TOKEN_PAGE} and replace the file with the downloaded kaggle.json")
    where = config if os.environ.get("KAGGLE_CONFIG_DIR") else "~/.kaggle/kaggle.json"
    raise UserError(f"no Kaggle credentials found: create a token on {TOKEN_PAGE} "
                    f"(API → Create New Token), save the downloaded kaggle.json as {where} and run "
                    f"`chmod 600 {where}` (or set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY)")


def _client() -> tuple[Any, Credentials]:
    """Import and authenticate the kaggle client, turning its prints and exit(1) into one UserError."""
    creds = find_credentials()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):  # its auth help and warnings; ours are clearer
            import kaggle  # noqa: F401  (authenticates at import; failures there are swallowed by it)
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise UserError(f"{creds.source}: Kaggle rejected these credentials (invalid or expired token); "
                        f"create a new token on {TOKEN_PAGE} and replace them") from None
    except ImportError as exc:
        raise UserError(f"the kaggle package is not installed properly ({exc}); run `make install`") from None
    except Exception as exc:  # the token check already talks to Kaggle
        raise _explain(exc, "", creds, "sign in") from None
    return api, creds


# A URL of any scheme, or anything with a query string (requests names a failed URL by its path
# and query alone): signed storage URLs carry their signature there.
_URLISH = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|\S*\?\S*=\S*")


def scrub(text: str, limit: int = 200) -> str:
    """`text` on one line, every URL replaced by <url>, at most `limit` characters."""
    return " ".join(_URLISH.sub("<url>", text).split())[:limit]


def _kaggle_message(response: Any) -> str:
    """Kaggle's own error text from a response, on one line, without URLs (they may carry signatures)."""
    text = ""
    with contextlib.suppress(Exception):
        body = response.json()
        text = str(body.get("message") or body.get("error") or "")
    text = text or f"{response.status_code} {response.reason or ''}".strip()
    return scrub(text)


def _explain(exc: Exception, competition: str, creds: Credentials, action: str) -> Exception:
    """A UserError saying what went wrong talking to Kaggle and how to fix it; other errors unchanged."""
    import requests  # a dependency of kaggle; only needed once the client has been used

    page = f"https://www.kaggle.com/competitions/{competition}"
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        code, said = response.status_code, _kaggle_message(response)
        if code == 401:
            return UserError(f"{creds.source}: Kaggle rejected the credentials (401 Unauthorized: {said}); "
                             f"they are wrong or expired: create a new token on {TOKEN_PAGE} and replace "
                             "them")
        if code == 403 and competition:
            # Kaggle answers an unknown slug with 403 as well as 404: both causes are named.
            return UserError(f"Kaggle refused to {action} {competition!r} (403 Forbidden: {said}): "
                             f"either no competition is called {competition!r} (check --competition"
                             ") or this account must still accept its rules: accept the competition "
                             f"rules on {page}/rules while logged in as this token's user (the API "
                             "cannot accept them), then run the command again")
        if code == 404:
            return UserError(f"competition {competition!r} not found on Kaggle (404: {said}); check "
                             "--competition or the config key competition (e.g. digit-recognizer)")
        if code == 429:
            return UserError(f"Kaggle is rate-limiting this account (429: {said}); wait and try again later")
        if code == 400:
            return UserError(f"Kaggle rejected the request to {action} (400): {said}")
        return UserError(f"Kaggle answered HTTP {code} while trying to {action} ({said}); try again later")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return UserError(f"could not reach Kaggle to {action} ({type(exc).__name__}); check the internet "
                         "connection (and HTTPS_PROXY if you use a proxy), then run the command again")
    if isinstance(exc, requests.RequestException):
        return UserError(f"request to Kaggle failed while trying to {action} ({type(exc).__name__}: "
                         f"{scrub(str(exc))}); run the command again")
    return exc  # not a network problem but a bug: re-raised as it is


# ---------------------------------------------------------------------------- download


def download(competition: str, data_dir: Path, *, force: bool = False, from_zip: Path | None = None,
             log: Log = print) -> None:
    """Install the competition's train/test/sample files into `data_dir`, from Kaggle or `from_zip`."""
    data_dir = Path(data_dir)
    competition = parse_competition(competition)
    if from_zip is not None:
        install_archive(Path(from_zip), data_dir)
        log(f"installed {', '.join(HEADERS)} from {from_zip} into {data_dir}")
        return
    if not force:
        problems = check_files(data_dir)
        if not problems:
            log(f"{data_dir}: competition data already present and valid; skipping the download "
                  "(use --force to download again)")
            return
        if any("missing" not in p for p in problems):
            log(f"{data_dir}: existing files look wrong ({'; '.join(problems)}); downloading again")
    api, creds = _client()
    log(f"downloading {competition!r} from Kaggle…")
    with _staging(data_dir) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its messages name our temp folder
                api.competition_download_files(competition, path=str(tmp), force=True,
                                               quiet=not sys.stderr.isatty())
        except ValueError as exc:  # the client's size check after a truncated transfer
            raise UserError(f"download of {competition!r} was incomplete ({exc}); "
                            "run the command again") from None
        except Exception as exc:
            raise _explain(exc, competition, creds, "download") from None
        archives = [p for p in tmp.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise UserError(f"Kaggle sent {len(archives)} files for {competition!r}, expected one .zip; "
                            "download it from the competition's Data page and use --from-zip")
        install_archive(archives[0], data_dir)
    log(f"installed {', '.join(HEADERS)} into {data_dir}")


# ---------------------------------------------------------------------------- submit


def default_message(run: str | None, run_dir: Path | None, csv: Path) -> str:
    """Submission description: run name, profile and CV accuracy when they are known, else the file name."""
    if run is None or run_dir is None:
        return csv.name
    parts = []
    with contextlib.suppress(UserError, OSError, AttributeError):
        profile = read_json(run_dir / "config.json").get("profile")
        if profile:
            parts.append(f"profile {profile}")
    with contextlib.suppress(UserError, OSError, AttributeError, KeyError, TypeError, ValueError):
        parts.append(f"CV accuracy {float(read_json(run_dir / 'metrics.json')['cv_accuracy']):.4f}")
    return f"{run}: {', '.join(parts)}" if parts else run


def prepare_submission(paths: Paths, run: str | None, file: Path | None,
                       log: Log = print) -> tuple[Path, str | None, int]:
    """The validated CSV to send, the run it belongs to (None for a bare --file) and its rows."""
    from pipeline.runfiles import RunFiles, latest_trained_run, trained_at

    if file is None:
        run = run or latest_trained_run(paths.runs)
        csv = paths.submissions / f"{run}.csv"
        rf = RunFiles(paths.run_dir(run))
        # Rebuild when missing or older than the run's last training (a resumed or retrained run).
        if not csv.is_file() or (rf.metrics.is_file() and csv.stat().st_mtime < trained_at(rf.root)):
            from pipeline.ensemble import predict_run

            log(f"building the submission of run '{run}'…")
            csv = predict_run(paths, run, log=log)
    else:
        csv = Path(file)
        if run is not None and not (paths.run_dir(run) / "config.json").is_file():
            raise UserError(f"--run {run}: no such run in {paths.runs} (no config.json); drop --run to "
                            "submit the file without recording the result in a run")
    ids = read_sample_ids(paths.data)
    if ids is None:  # no sample_submission.csv to compare with: Kaggle's ids are 1…28,000
        ids = np.arange(1, KAGGLE_ROWS + 1)
    read_submission(csv, ids)
    return csv, run, len(ids)


def what_is_sent(paths: Paths, run: str | None, picked: bool, csv: Path, rows: int) -> list[str]:
    """What `submit` says before it sends anything: the run, how it was picked, its profile, its
    CV accuracy and holdout estimate, and the file."""
    checked = ("sample_submission.csv" if (paths.data / "sample_submission.csv").is_file()
               else f"Kaggle's {KAGGLE_ROWS:,} ImageIds")
    file_line = f"  file {csv} ({rows} rows, checked against {checked})"
    if run is None:
        return ["a file of your own, recorded in no run (--run NAME records the score in a run):",
                file_line]
    from pipeline.runfiles import RunFiles, read_optional

    rf = RunFiles(paths.run_dir(run))
    profile = (read_optional(rf.config) or {}).get("profile", "?")
    how = ("the most recently trained run; name another with --run" if picked
           else "named with --run")
    metrics = read_optional(rf.metrics) or {}
    cv = metrics.get("cv_accuracy")
    cv_text = f"CV accuracy {cv:.4f} (out-of-fold)" if isinstance(cv, (int, float)) else "no CV accuracy"
    h = metrics.get("holdout")
    held = (f"holdout estimate {h['accuracy']:.4f} ({h['errors']} errors on {h['n']} held-out images)"
            if isinstance(h, dict) and "accuracy" in h
            else "holdout estimate: none (the run held nothing out; --set holdout=0.1 when training "
                 "gives one)")
    return [f"run '{run}' (profile {profile}; {how})", f"  {cv_text}; {held}", file_line]


def _run_competition(paths: Paths, run: str | None) -> str:
    """The competition a run was trained for (its config key), else the config's default."""
    from pipeline.config import Config
    from pipeline.runfiles import RunFiles, read_optional

    saved = read_optional(RunFiles(paths.run_dir(run)).config) if run else None
    return str((saved or {}).get("competition") or Config().competition)


def submit_run(paths: Paths, *, competition: str | None = None, run: str | None = None,
               picked: bool = False, file: Path | None = None, message: str | None = None,
               dry_run: bool = False, wait: bool = True, timeout: float = 600.0,
               log: Log = print) -> dict[str, Any] | None:
    """`python -m pipeline submit`: pick or build the CSV, validate it, say what it is, upload it
    and record the score. `picked`: the run was not named but taken as the latest."""
    competition = parse_competition(competition or _run_competition(paths, run))
    csv, run, rows = prepare_submission(paths, run, file, log)
    for line in what_is_sent(paths, run, picked, csv, rows):
        log(line)
    run_dir = paths.run_dir(run) if run else None
    message = message if message is not None else default_message(run, run_dir, csv)
    record = run_dir / "kaggle_submission.json" if run_dir else None
    return submit(csv, competition=competition, message=message, record=record, wait=wait,
                  timeout=timeout, dry_run=dry_run, log=log)


def _status_name(submission: Any) -> str:
    status = getattr(submission, "status", None)
    return getattr(status, "name", str(status or "PENDING"))


def _public_score(submission: Any) -> str | None:
    """The public score Kaggle gave, or None (the client reports a missing one as "")."""
    score = getattr(submission, "public_score", None)
    return str(score) if score not in (None, "") else None


def _get_submission(api: Any, ref: int) -> Any:
    """One GetSubmission call. Not `api.get_submission`: on a 429 that sleeps out Retry-After up to
    ten times inside one call, past --timeout, printing "Will retry" lines; waiting is ours to do."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    with contextlib.redirect_stdout(io.StringIO()):  # with VERBOSE=1 it prints auth headers
        with api.build_kaggle_client() as client:
            request = ApiGetSubmissionRequest()
            request.ref = int(ref)
            return client.competitions.competition_api_client.get_submission(request)


def _retry_after(response: Any) -> float | None:
    """Seconds from a Retry-After header given in seconds, else None."""
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        return max(0.0, float(response.headers.get("Retry-After")))
    return None


def wait_for_score(api: Any, ref: int, timeout: float, competition: str, creds: Credentials,
                   log: Log = print) -> Any:
    """Poll the submission until Kaggle scores it; returns it, or None when `timeout` seconds pass first."""
    import requests

    deadline = time.monotonic() + timeout
    delay = 1.0
    while True:
        wait, status = delay, "PENDING"
        try:
            submission = _get_submission(api, ref)
            status = _status_name(submission)
            if status == "ERROR" or (status == "COMPLETE" and _public_score(submission) is not None):
                return submission
            if status == "COMPLETE":
                status = "COMPLETE, no public score yet"  # it may show a moment later
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 429:
                wait = _retry_after(exc.response) or delay
                status = "Kaggle is rate-limiting status checks (429)"
            elif code == 404 or code >= 500:
                status = "not readable yet" if code == 404 else f"Kaggle answered {code}"
            else:
                raise _explain(exc, competition, creds, "check the submission") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            status = f"no answer from Kaggle ({type(exc).__name__})"
        except Exception as exc:
            raise _explain(exc, competition, creds, "check the submission") from None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        log(f"  {status}; checking again in {min(wait, left):.0f} s…")
        time.sleep(min(wait, left))
        delay = min(delay * 2, 15.0)  # scoring takes seconds to minutes; don't hammer the API


def submit(csv: Path, *, competition: str, message: str, record: Path | None = None, wait: bool = True,
           timeout: float = 300.0, dry_run: bool = False, log: Log = print) -> dict[str, Any] | None:
    """Upload a validated submission CSV; with `wait`, poll until scored and record the result in `record`."""
    competition = parse_competition(competition)
    csv = Path(csv)
    if dry_run:
        log(f"dry run: would submit {csv} ({csv.stat().st_size:,} bytes, validated) to {competition!r} "
            f"with message {message!r}" + (f", recording the score in {record}" if record else "")
            + "; nothing was sent")
        return None
    api, creds = _client()
    log(f"submitting {csv} to {competition!r}: {message!r}")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            result = api.competition_submit(str(csv), message, competition, quiet=True)
    except Exception as exc:
        raise _explain(exc, competition, creds, "submit") from None
    ref = int(getattr(result, "ref", 0) or 0)
    said = " ".join((getattr(result, "message", "") or "").split())
    if not ref:
        # The client reports a failed upload by returning ref 0 and this message instead of raising;
        # what it printed may hold the signed storage URL, a secret.
        detail = scrub(captured.getvalue())
        raise UserError(f"Kaggle did not accept the upload of {csv} ({said or 'no reason given'}"
                        f"{'; ' + detail if detail else ''}); nothing was submitted, try again later")
    entry: dict[str, Any] = {
        "competition": competition, "ref": ref, "file": str(csv), "message": message,
        "status": "PENDING", "public_score": None, "error": None,
        "submitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    log(f"submitted: ref {ref} ({said})")
    if record is not None:
        write_json(record, entry)  # written now so the ref survives a timeout or Ctrl-C
    if not wait:
        return entry
    scored = wait_for_score(api, ref, timeout, competition, creds, log)
    if scored is None:
        warn(f"submission {ref} not scored after {timeout:g} s; see "
             f"https://www.kaggle.com/competitions/{competition}/submissions")
        return entry
    entry.update(status=_status_name(scored), public_score=_public_score(scored),
                 error=(getattr(scored, "error_description", None) or None),
                 scored_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if record is not None:
        write_json(record, entry)
    if entry["status"] == "ERROR":
        raise UserError(f"Kaggle could not score submission {ref}: {entry['error'] or 'no reason given'}; "
                        "check the file format against sample_submission.csv")
    log(f"public score: {entry['public_score']}")
    return entry
