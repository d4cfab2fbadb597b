"""Talk to Kaggle: the competition's data and the scores of submissions, through Kaggle's client.

    python -m pipeline download [--competition SLUG|URL] [--data DIR] [--force] [--from-zip ZIP]

Credentials are the user's usual Kaggle setup (KAGGLE_API_TOKEN, ~/.kaggle/access_token, kaggle.json in
KAGGLE_CONFIG_DIR or ~/.kaggle, KAGGLE_USERNAME + KAGGLE_KEY). The `kaggle` package authenticates, prints
and may `exit(1)` while being imported, so it is imported only inside the functions that contact Kaggle,
after this module has checked that credentials exist. The archive is extracted by `pipeline.kaggle.archive`,
not by the client, so that unsafe members are refused and nothing reaches the data folder before every
check has passed. Which file `submit` sends, and for which run, is `pipeline.kaggle.submit`'s to decide;
the competition's own records (submissions left today, past submissions, the leaderboard) are read by
`pipeline.kaggle.records`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.console import Log, warn
from pipeline.errors import UserError
from pipeline.kaggle.archive import HEADERS, check_files, install_archive, staging

TOKEN_PAGE = "https://www.kaggle.com/settings/api"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")
_URL = re.compile(r"^(?:https?://)?(?:www\.)?kaggle\.com/(?:c|competitions)/([^/?#]+)", re.IGNORECASE)


# ---------------------------------------------------------------------------- settings


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


def connect() -> tuple[Any, Credentials]:
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
        raise explain(exc, "", creds, "sign in") from None
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


def explain(exc: Exception, competition: str, creds: Credentials, action: str) -> Exception:
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
    api, creds = connect()
    log(f"downloading {competition!r} from Kaggle…")
    with staging(data_dir) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its messages name our temp folder
                api.competition_download_files(competition, path=str(tmp), force=True,
                                               quiet=not sys.stderr.isatty())
        except ValueError as exc:  # the client's size check after a truncated transfer
            raise UserError(f"download of {competition!r} was incomplete ({exc}); "
                            "run the command again") from None
        except Exception as exc:
            raise explain(exc, competition, creds, "download") from None
        archives = [p for p in tmp.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise UserError(f"Kaggle sent {len(archives)} files for {competition!r}, expected one .zip; "
                            "download it from the competition's Data page and use --from-zip")
        install_archive(archives[0], data_dir)
    log(f"installed {', '.join(HEADERS)} into {data_dir}")


# ---------------------------------------------------------------------------- upload and wait for the score


def status_name(submission: Any) -> str:
    """PENDING, COMPLETE or ERROR: a submission's status as Kaggle gave it."""
    status = getattr(submission, "status", None)
    return getattr(status, "name", str(status or "PENDING"))


def public_score(submission: Any) -> str | None:
    """The public score Kaggle gave, or None (the client reports a missing one as "")."""
    score = getattr(submission, "public_score", None)
    return str(score) if score not in (None, "") else None


def call(api: Any, method: str, request: Any) -> Any:
    """One call of kagglesdk's competitions API (`method` of its CompetitionApiClient). Not the
    client's `competition_*` helpers: some sleep out a 429's Retry-After up to ten times inside one
    call, printing "Will retry" lines, and others print paging tokens; waiting and messages are ours."""
    # With VERBOSE=1 the client prints auth headers.
    with contextlib.redirect_stdout(io.StringIO()), api.build_kaggle_client() as client:
        return getattr(client.competitions.competition_api_client, method)(request)


def _get_submission(api: Any, ref: int) -> Any:
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    request = ApiGetSubmissionRequest()
    request.ref = int(ref)
    return call(api, "get_submission", request)


def retry_after(response: Any) -> float | None:
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
            status = status_name(submission)
            if status == "ERROR" or (status == "COMPLETE" and public_score(submission) is not None):
                return submission
            if status == "COMPLETE":
                status = "COMPLETE, no public score yet"  # it may show a moment later
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 429:
                wait = retry_after(exc.response) or delay
                status = "Kaggle is rate-limiting status checks (429)"
            elif code == 404 or code >= 500:
                status = "not readable yet" if code == 404 else f"Kaggle answered {code}"
            else:
                raise explain(exc, competition, creds, "check the submission") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            status = f"no answer from Kaggle ({type(exc).__name__})"
        except Exception as exc:
            raise explain(exc, competition, creds, "check the submission") from None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        log(f"  {status}; checking again in {min(wait, left):.0f} s…")
        time.sleep(min(wait, left))
        delay = min(delay * 2, 15.0)  # scoring takes seconds to minutes; don't hammer the API


def upload(api: Any, creds: Credentials, csv: Path, competition: str, message: str,
           log: Log = print) -> int:
    """Upload `csv` as a submission to `competition` and return its ref; a UserError when Kaggle
    did not take it."""
    log(f"submitting {csv} to {competition!r}: {message!r}")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            result = api.competition_submit(str(csv), message, competition, quiet=True)
    except Exception as exc:
        raise explain(exc, competition, creds, "submit") from None
    ref = int(getattr(result, "ref", 0) or 0)
    said = " ".join((getattr(result, "message", "") or "").split())
    if not ref:
        # The client reports a failed upload by returning ref 0 and this message instead of raising;
        # what it printed may hold the signed storage URL, a secret.
        detail = scrub(captured.getvalue())
        raise UserError(f"Kaggle did not accept the upload of {csv} ({said or 'no reason given'}"
                        f"{'; ' + detail if detail else ''}); nothing was submitted, try again later")
    log(f"submitted: ref {ref} ({said})")
    return ref
