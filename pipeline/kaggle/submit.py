"""What `submit` sends: the run's submission (rebuilt when missing or older than its training) or a
file of the user's, validated, described before anything is sent; then, once Kaggle says a
submission is left today, uploaded through `pipeline.kaggle.client`, its score and leaderboard rank
added to the run's history (`runs/<run>/kaggle_submission.json`, `pipeline.kaggle.history`).

    python -m pipeline submit [--run NAME | --file CSV] [--message TEXT] [--dry-run] [--no-wait] [--timeout S]
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, Paths
from pipeline.console import Log, warn
from pipeline.data.datafiles import DataFiles
from pipeline.data.load import file_sha256
from pipeline.data.submission import KAGGLE_ROWS, read_sample_ids, read_submission
from pipeline.errors import UserError
from pipeline.files import read_json
from pipeline.kaggle import history
from pipeline.kaggle.client import (
    connect,
    parse_competition,
    public_score,
    status_name,
    upload,
    wait_for_score,
)
from pipeline.kaggle.records import check_limits, leaderboard_rank, rank_text, submission_limits
from pipeline.prediction.ensemble import predict_run, run_submission
from pipeline.prediction.metricsfile import holdout_text
from pipeline.runfiles import RunFiles, latest_trained_run, read_optional, trained_at


def default_message(run: str | None, run_dir: Path | None, csv: Path) -> str:
    """Submission description: run name, profile and CV accuracy when they are known, else the file name."""
    if run is None or run_dir is None:
        return csv.name
    rf = RunFiles(run_dir)
    parts = []
    with contextlib.suppress(UserError, OSError, AttributeError):
        profile = read_json(rf.config).get("profile")
        if profile:
            parts.append(f"profile {profile}")
    with contextlib.suppress(UserError, OSError, AttributeError, KeyError, TypeError, ValueError):
        parts.append(f"CV accuracy {float(read_json(rf.metrics)['cv_accuracy']):.4f}")
    return f"{run}: {', '.join(parts)}" if parts else run


def prepare_submission(paths: Paths, run: str | None, file: Path | None,
                       log: Log = print) -> tuple[Path, str | None, int]:
    """The validated CSV to send, the run it belongs to (None for a bare --file) and its rows."""
    if file is None:
        run = run or latest_trained_run(paths.runs)
        csv = run_submission(paths, run)
        rf = RunFiles(paths.run_dir(run))
        # Rebuild when missing or older than the run's last training (a resumed or retrained run).
        if not csv.is_file() or (rf.metrics.is_file() and csv.stat().st_mtime < trained_at(rf.root)):
            log(f"building the submission of run '{run}'…")
            csv = predict_run(paths, run, log=log)
    else:
        csv = Path(file)
        rf = RunFiles(paths.run_dir(run)) if run is not None else None
        if rf is not None and not rf.config.is_file():
            raise UserError(f"--run {run}: no such run in {paths.runs} (no {rf.config.name}); drop "
                            "--run to submit the file without recording the result in a run")
    ids = read_sample_ids(paths.data)
    if ids is None:  # no sample_submission.csv to compare with: Kaggle's ids are 1…28,000
        ids = np.arange(1, KAGGLE_ROWS + 1)
    read_submission(csv, ids)
    return csv, run, len(ids)


def what_is_sent(paths: Paths, run: str | None, picked: bool, csv: Path, rows: int) -> list[str]:
    """What `submit` says before it sends anything: the run, how it was picked, its profile, its
    CV accuracy and holdout estimate, and the file."""
    sample = DataFiles(paths.data).sample_submission
    checked = (sample.name if sample.is_file()
               else f"Kaggle's {KAGGLE_ROWS:,} ImageIds")
    file_line = f"  file {csv} ({rows} rows, checked against {checked})"
    if run is None:
        return ["a file of your own, recorded in no run (--run NAME records the score in a run):",
                file_line]
    rf = RunFiles(paths.run_dir(run))
    profile = (read_optional(rf.config) or {}).get("profile", "?")
    how = ("the most recently trained run; name another with --run" if picked
           else "named with --run")
    metrics = read_optional(rf.metrics) or {}
    cv = metrics.get("cv_accuracy")
    cv_text = f"CV accuracy {cv:.4f} (out-of-fold)" if isinstance(cv, (int, float)) else "no CV accuracy"
    h = metrics.get("holdout")
    held = (f"holdout estimate {holdout_text(h)}"
            if isinstance(h, dict) and "accuracy" in h
            else "holdout estimate: none (the run held nothing out; --set holdout=0.1 when training "
                 "gives one)")
    return [f"run '{run}' (profile {profile}; {how})", f"  {cv_text}; {held}", file_line]


def _run_competition(paths: Paths, run: str | None) -> str:
    """The competition a run was trained for (its config key), else the config's default."""
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
    record = RunFiles(run_dir).kaggle if run_dir else None
    return send(csv, competition=competition, message=message, record=record, wait=wait,
                timeout=timeout, dry_run=dry_run, log=log)


def _now() -> str:
    """The time now in UTC, as the run's Kaggle history records it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def send(csv: Path, *, competition: str, message: str, record: Path | None = None, wait: bool = True,
         timeout: float = 300.0, dry_run: bool = False, log: Log = print) -> dict[str, Any] | None:
    """Upload a validated submission CSV once Kaggle says one is left today; with `wait`, poll until
    scored and rank the score on the public leaderboard. Each step is added to the history in `record`."""
    if dry_run:
        log(f"dry run: would submit {csv} ({csv.stat().st_size:,} bytes, validated) to {competition!r} "
            f"with message {message!r}" + (f", recording the score in {record}" if record else "")
            + "; nothing was sent, and a dry run is not counted against the daily limit")
        return None
    api, creds = connect()
    log(check_limits(submission_limits(api, creds, competition), competition))
    sha256 = file_sha256(csv)
    ref = upload(api, creds, csv, competition, message, log)
    entry: dict[str, Any] = {
        "competition": competition, "ref": ref, "file": str(csv), "sha256": sha256,
        "message": message, "status": "PENDING", "public_score": None, "error": None,
        "submitted_at": _now(),
    }
    if record is not None:
        history.record(record, entry)  # written now so the ref survives a timeout or Ctrl-C
    if not wait:
        return entry
    scored = wait_for_score(api, ref, timeout, competition, creds, log)
    if scored is None:
        warn(f"submission {ref} not scored after {timeout:g} s; see "
             f"https://www.kaggle.com/competitions/{competition}/submissions")
        return entry
    entry.update(status=status_name(scored), public_score=public_score(scored),
                 error=(getattr(scored, "error_description", None) or None), scored_at=_now())
    if entry["status"] != "ERROR":
        try:
            entry["leaderboard"] = leaderboard_rank(api, creds, competition, entry["public_score"],
                                                    getattr(scored, "team_name", None))
        except UserError as exc:  # the score stands without its rank
            warn(f"the public leaderboard was not read: {exc}")
    if record is not None:
        history.record(record, entry)
    if entry["status"] == "ERROR":
        raise UserError(f"Kaggle could not score submission {ref}: {entry['error'] or 'no reason given'}; "
                        "check the file format against sample_submission.csv")
    log(f"public score: {entry['public_score']}")
    if "leaderboard" in entry:
        log(f"on the public leaderboard it would stand at {rank_text(entry['leaderboard'])} "
            "(your team's own entry left out)")
    return entry
