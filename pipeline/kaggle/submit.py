"""What `submit` sends: the run's submission (rebuilt when missing or older than its training) or a
file of the user's, validated, described before anything is sent, then uploaded and its score
recorded in the run (`runs/<run>/kaggle_submission.json`) through `pipeline.kaggle.client`.

    python -m pipeline submit [--run NAME | --file CSV] [--message TEXT] [--dry-run] [--no-wait] [--timeout S]
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, Paths
from pipeline.console import Log
from pipeline.data.datafiles import DataFiles
from pipeline.data.submission import KAGGLE_ROWS, read_sample_ids, read_submission
from pipeline.errors import UserError
from pipeline.files import read_json
from pipeline.kaggle.client import parse_competition, submit
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
    return submit(csv, competition=competition, message=message, record=record, wait=wait,
                  timeout=timeout, dry_run=dry_run, log=log)
