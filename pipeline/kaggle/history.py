"""A run's Kaggle submissions, oldest first, as `submit` records them in the run's
`kaggle_submission.json` (`RunFiles.kaggle`): `{"submissions": [entry, …]}`, one entry per upload
with the uploaded file's sha256, its ref, status, public score and leaderboard rank.

Before this history was kept the file held the last submission alone, as one entry; such a file
is read as a history of that one entry and written in the new shape at the next upload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.files import write_json
from pipeline.runfiles import read_optional


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every submission recorded in `path`, oldest first (none when the file does not exist)."""
    saved = read_optional(path)
    if saved is None:
        return []
    if "submissions" not in saved:  # the single record written before the history was kept
        return [saved] if saved.get("ref") else []
    return [entry for entry in saved["submissions"] if isinstance(entry, dict)]


def latest(path: Path) -> dict[str, Any] | None:
    """The last submission recorded in `path`, or None."""
    history = read_history(path)
    return history[-1] if history else None


def record(path: Path, entry: dict[str, Any]) -> None:
    """Add `entry` to the history in `path`, or replace the entry with the same ref (its score came)."""
    history = read_history(path)
    same = [i for i, old in enumerate(history) if old.get("ref") == entry["ref"]]
    if same:
        history[same[0]] = entry
    else:
        history.append(entry)
    write_json(path, {"submissions": history})
