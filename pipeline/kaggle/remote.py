"""Train a run on Kaggle's GPU through Kaggle's client: preflight, push the kernel, follow the
version the push returned, pull its outputs and install them (`pipeline.kaggle.pulled`).

    python -m pipeline kaggle-train [--profile gpu] [--run NAME] [--set K=V] [--accelerator SHAPE]
                                    [--no-wait] [--timeout S] [--dry-run --out DIR]
    python -m pipeline kaggle-status --run NAME
    python -m pipeline kaggle-pull --run NAME [--timeout S]

Every call names the version the push returned (`owner/slug/<version>`): without it Kaggle
answers for the kernel's latest session it knows of, which may be an older version's, already
COMPLETE. The run folder holds only `kaggle_kernel.json` (ref, version, URL, status) from the push
until a pull installs the run beside it.

Test hook: PIPELINE_KAGGLE_POLL="FIRST,MOST" replaces the seconds between status checks (the
first wait, doubled up to the most), so the tests follow a kernel in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import Config, Paths
from pipeline.console import Log, duration
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.kaggle.client import (
    Credentials,
    connect,
    explain,
    parse_competition,
    retry_after,
    scrub,
)
from pipeline.kaggle.kernel import (
    METADATA,
    SESSION_TIMEOUT_S,
    kernel_slug,
    write_kernel,
)
from pipeline.kaggle.pulled import check_empty, install, staging_dir
from pipeline.kaggle.records import submission_limits
from pipeline.runfiles import RunFiles, read_optional

POLL_ENV = "PIPELINE_KAGGLE_POLL"
# A GPU run takes minutes to hours: check every 10 s at first, then every 2 minutes.
POLL_FIRST_S, POLL_MOST_S = 10.0, 120.0
ACTIVE = ("QUEUED", "RUNNING", "NEW_SCRIPT", "CANCEL_REQUESTED")
LOG_TAIL = 20


def _commands(run: str) -> str:
    return (f"`python -m pipeline kaggle-status --run {run}` to check it, "
            f"`python -m pipeline kaggle-pull --run {run}` to wait for it and install its outputs")


def _poll_delays() -> tuple[float, float]:
    raw = os.environ.get(POLL_ENV, "").strip()
    if not raw:
        return POLL_FIRST_S, POLL_MOST_S
    try:
        first, most = (float(part) for part in raw.split(","))
    except ValueError:
        raise UserError(f"{POLL_ENV}={raw!r}: expected two numbers of seconds, e.g. 10,120") from None
    return first, most


def _sdk(api: Any) -> Any:
    """kagglesdk's kernel API client (the kaggle client's methods print, retry and hide 429s)."""
    return api.build_kaggle_client()


def _kernel_error(exc: Exception, creds: Credentials, record: dict[str, Any], action: str) -> Exception:
    """A UserError for a failed kernel call; other errors as `explain` gives them."""
    import requests

    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None and response.status_code in (403, 404):
        return UserError(f"Kaggle has no kernel {record['ref']} version {record['version']} that this "
                         f"account can read ({response.status_code}); was it deleted on "
                         f"{record.get('url') or 'kaggle.com'}?")
    return explain(exc, "", creds, action)


# ---------------------------------------------------------------------------- calls


def _quota(api: Any, creds: Credentials, log: Log) -> None:
    """Show the GPU hours left this week; refuse when none are."""
    from kagglesdk.kernels.types.kernels_api_service import (
        ApiGetAcceleratorQuotaStatisticsRequest,
    )

    try:
        with _sdk(api) as kaggle:
            stats = kaggle.kernels.kernels_api_client.get_accelerator_quota_statistics(
                ApiGetAcceleratorQuotaStatisticsRequest())
    except Exception as exc:
        raise explain(exc, "", creds, "read the GPU quota") from None
    gpu = stats.gpu_quota
    total = gpu.total_time_allowed.total_seconds() if gpu and gpu.total_time_allowed else 0.0
    used = sum(t.total_seconds() for t in (gpu.time_used, gpu.time_reserved) if t) if gpu else 0.0
    refresh = (f"; it refreshes {stats.quota_refresh_time:%Y-%m-%d %H:%M} UTC"
               if stats.quota_refresh_time else "")
    if total - used <= 0:
        raise UserError(f"no Kaggle GPU quota left ({used / 3600:.1f} h used of {total / 3600:.1f} h "
                        f"this week{refresh}); nothing was pushed (a phone-verified account gets GPU "
                        "hours every week)")
    log(f"Kaggle GPU quota: {(total - used) / 3600:.1f} h left of {total / 3600:.1f} h this week{refresh}")


def _for_version(request: Any, record: dict[str, Any]) -> Any:
    """`request` addressed to the recorded kernel version (never to whichever is newest)."""
    request.user_name, request.kernel_slug = record["ref"].split("/")
    request.version_label = f"v{record['version']}"
    return request


def _status(api: Any, record: dict[str, Any]) -> tuple[str, str]:
    """The status of the recorded kernel version, and its failure message ("" when none)."""
    from kagglesdk.kernels.types.kernels_api_service import (
        ApiGetKernelSessionStatusRequest,
    )

    request = _for_version(ApiGetKernelSessionStatusRequest(), record)
    with _sdk(api) as kaggle:
        answer = kaggle.kernels.kernels_api_client.get_kernel_session_status(request)
    return getattr(answer.status, "name", str(answer.status)), answer.failure_message or ""


def _output(api: Any, record: dict[str, Any]) -> Any:
    """ListKernelSessionOutput for the recorded version: its files and its log so far."""
    from kagglesdk.kernels.types.kernels_api_service import (
        ApiListKernelSessionOutputRequest,
    )

    request = _for_version(ApiListKernelSessionOutputRequest(), record)
    with _sdk(api) as kaggle:
        return kaggle.kernels.kernels_api_client.list_kernel_session_output(request)


def log_text(raw: str) -> str:
    """A kernel's log as text: Kaggle sends a JSON list of {stream_name, time, data} entries."""
    try:
        entries = json.loads(raw)
    except (TypeError, ValueError):
        return raw or ""
    if isinstance(entries, list):
        return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))
    return raw


# ---------------------------------------------------------------------------- the record


def _record(paths: Paths, run: str) -> dict[str, Any]:
    record = read_optional(RunFiles(paths.run_dir(run)).kaggle_kernel)
    if not record:
        raise UserError(f"run '{run}' has no Kaggle kernel ({RunFiles(paths.run_dir(run)).kaggle_kernel} "
                        f"is missing); push one with `python -m pipeline kaggle-train --run {run}`")
    return record


def _save(paths: Paths, run: str, record: dict[str, Any], **changes: Any) -> None:
    record.update(changes)
    write_json(RunFiles(paths.run_dir(run)).kaggle_kernel, record)


# ---------------------------------------------------------------------------- commands


def dry_run(cfg: Config, run: str, accelerator: str, out: Path, log: Log = print) -> None:
    """Write the kernel folder into `out`, with no credentials and no network."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: not empty; name a new or empty folder for the kernel")
    write_kernel(out, cfg, run, accelerator)
    log(f"dry run: wrote the kernel for run '{run}' into {out} ({METADATA} and "
        f"{kernel_slug(run)}.py); nothing was sent. Push it yourself with "
        f"`kaggle kernels push -p {out} -t {SESSION_TIMEOUT_S}`")


def train_on_kaggle(cfg: Config, paths: Paths, run: str, *, accelerator: str, wait: bool = True,
                    timeout: float = SESSION_TIMEOUT_S, log: Log = print) -> None:
    """`kaggle-train`: preflight, push the kernel, then (with `wait`) follow it and pull the run."""
    competition = parse_competition(cfg.competition)
    rf = RunFiles(paths.run_dir(run))
    check_empty(rf.root)  # before anything is sent: a run with models is never overwritten
    api, creds = connect()
    previous = read_optional(rf.kaggle_kernel)
    if previous:
        try:
            status, _ = _status(api, previous)
        except Exception as exc:
            raise _kernel_error(exc, creds, previous, "check the run's kernel") from None
        if status in ACTIVE:
            raise UserError(f"run '{run}' already has kernel version {previous['version']} {status} on "
                            f"Kaggle ({previous['url']}); use {_commands(run)}")
    # The competition exists and its rules are accepted (else a 404 or 403, said in words) before
    # anything is pushed: a kernel Kaggle cannot attach the data to would only fail in the queue.
    submission_limits(api, creds, competition, action="train with the data of")
    _quota(api, creds, log)
    owner = str(api.get_config_value(api.CONFIG_NAME_USER) or "")
    with tempfile.TemporaryDirectory(prefix="digits-kernel-") as tmp:
        folder = write_kernel(Path(tmp), cfg, run, accelerator, owner)
        log(f"pushing kernel {owner}/{kernel_slug(run)} (profile {cfg.profile}, {accelerator}, "
            f"competition {competition})…")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its notes and warnings; ours follow
                answer = api.kernels_push(str(folder), timeout=str(SESSION_TIMEOUT_S), acc=accelerator)
        except Exception as exc:
            raise explain(exc, competition, creds, "push the kernel") from None
    if answer.error:
        raise UserError(f"Kaggle refused the kernel: {scrub(answer.error)}")
    if answer.invalid_competition_sources:  # checked before the push; Kaggle may still say so
        raise UserError(f"Kaggle saved the kernel but could not attach competition {competition!r} "
                        f"to it: either no competition is called {competition!r} (check the config "
                        "key competition) or this account must still accept its rules on "
                        f"https://www.kaggle.com/competitions/{competition}/rules; then run "
                        "kaggle-train again")
    record = {"ref": f"{owner}/{kernel_slug(run)}", "version": int(answer.version_number or 0),
              "url": answer.url, "competition": competition, "profile": cfg.profile,
              "accelerator": accelerator,
              "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "status": "QUEUED", "failure_message": None}
    if not record["version"]:
        raise UserError(f"Kaggle saved the kernel without a version number ({answer.url}); "
                        "nothing to follow, try again later")
    _save(paths, run, record)
    log(f"pushed kernel {record['ref']} version {record['version']}: {record['url']}")
    if not wait:
        log(f"not waiting (--no-wait): {_commands(run)}")
        return
    follow_and_pull(paths, run, timeout=timeout, log=log, client=(api, creds))


def kernel_status(paths: Paths, run: str, log: Log = print) -> str:
    """`kaggle-status`: the recorded kernel version's status, shown and recorded."""
    record = _record(paths, run)
    api, creds = connect()
    try:
        status, failure = _status(api, record)
    except Exception as exc:
        raise _kernel_error(exc, creds, record, "check the kernel") from None
    _save(paths, run, record, status=status, failure_message=failure or None)
    installed = RunFiles(paths.run_dir(run)).metrics.is_file()
    then = ("; its outputs are installed" if installed
            else f"; `python -m pipeline kaggle-pull --run {run}` installs them" if status == "COMPLETE"
            else "")
    log(f"run '{run}': kernel {record['ref']} version {record['version']} is {status}"
        f"{f' ({failure})' if failure else ''}{then}; {record['url']}")
    return status


def _follow(api: Any, creds: Credentials, paths: Paths, run: str, record: dict[str, Any],
            timeout: float, log: Log) -> tuple[str, str, str]:
    """Poll the recorded version until it ends or `timeout` passes, showing its log as it grows;
    returns its last status, failure message and log."""
    import requests

    first, most = _poll_delays()
    deadline, delay = time.monotonic() + timeout, first
    status, failure, text, said = str(record.get("status") or "QUEUED"), "", "", ""
    while True:
        wait, note = delay, ""
        try:
            status, failure = _status(api, record)
            if status != "QUEUED":
                text = log_text(_output(api, record).log or "") or text
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 429:
                wait = retry_after(exc.response) or delay
                note = "Kaggle is rate-limiting status checks (429)"
            elif code >= 500:
                note = f"Kaggle answered {code}"
            else:
                raise _kernel_error(exc, creds, record, "check the kernel") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            note = f"no answer from Kaggle ({type(exc).__name__})"
        except Exception as exc:
            raise _kernel_error(exc, creds, record, "check the kernel") from None
        for line in (text[len(said):] if text.startswith(said) else text).splitlines():
            log(f"  | {line}")
        said = text
        if status != record.get("status"):
            _save(paths, run, record, status=status, failure_message=failure or None)
            log(f"kernel version {record['version']}: {status}")
        if status not in ACTIVE:
            return status, failure, text
        left = deadline - time.monotonic()
        if left <= 0:
            return status, failure, text
        if note:
            log(f"  {note}; checking again in {min(wait, left):.0f} s…")
        time.sleep(min(wait, left))
        delay = min(delay * 2, most)


def follow_and_pull(paths: Paths, run: str, *, timeout: float = SESSION_TIMEOUT_S, log: Log = print,
                    client: tuple[Any, Credentials] | None = None) -> None:
    """`kaggle-pull` (and the end of `kaggle-train`): wait for the recorded kernel version to end,
    then pull its outputs, check them and install the run."""
    rf = RunFiles(paths.run_dir(run))
    record = _record(paths, run)
    check_empty(rf.root)
    api, creds = client or connect()
    started = time.monotonic()
    status, failure, text = _follow(api, creds, paths, run, record, timeout, log)
    if status in ACTIVE:
        raise UserError(f"kernel {record['ref']} version {record['version']} is still {status} after "
                        f"{duration(time.monotonic() - started)} (--timeout {timeout:g}); it goes on "
                        f"on Kaggle ({record['url']}): {_commands(run)}")
    if status != "COMPLETE":
        for line in text.splitlines()[-LOG_TAIL:]:
            log(f"  | {line}")
        raise UserError(f"kernel {record['ref']} version {record['version']} ended {status}: "
                        f"{failure or 'no failure message'} (the log's last lines are above; the "
                        f"whole log: {record['url']}); nothing was installed in {rf.root}")
    staging = staging_dir(paths.runs, run)
    log(f"pulling the outputs of version {record['version']} into {staging}…")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.kernels_output(f"{record['ref']}/{record['version']}", str(staging), force=True,
                               quiet=True)
    except ValueError as exc:  # the client refuses an output named to land outside the folder
        raise UserError(f"the kernel's outputs were refused: {scrub(str(exc))}; nothing was "
                        f"installed in {rf.root}, and what came is kept in {staging}") from None
    except Exception as exc:
        raise _kernel_error(exc, creds, record, "pull the kernel's outputs") from None
    install(staging, rf.root, log=log)
    _save(paths, run, record, pulled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    log(f"installed run '{run}' from Kaggle into {rf.root}: `python -m pipeline report --run {run}`, "
        f"`predict --run {run}` and `submit --run {run}` use it")
