"""The competition's own records on Kaggle: the submissions left today (asked before `submit`
uploads), the past submissions each matched to the local run it came from, and where a score
would rank on the public leaderboard.

    python -m pipeline submissions [--competition SLUG|URL] [--runs-dir DIR] [--limit N]

Each call is one request of kagglesdk's competitions API (`client.call`: no hidden retries), its
errors explained as the client's others are. A listed submission is matched by its ref to the run
whose history (`pipeline.kaggle.history`) recorded it; the sha256 recorded with it says whether the
run's CSV is still the file Kaggle scored. Kaggle's daily count starts again at midnight UTC: the
API does not say so, the competition pages do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.console import Log, duration, table
from pipeline.data.load import file_sha256
from pipeline.errors import UserError
from pipeline.kaggle.client import (
    Credentials,
    call,
    connect,
    explain,
    parse_competition,
    public_score,
    status_name,
)
from pipeline.kaggle.history import read_history
from pipeline.runfiles import RunFiles

PAGE = 100  # items asked per page of a listing


# ---------------------------------------------------------------------------- submissions left today


@dataclass(frozen=True)
class Limits:
    """What GetSubmissionLimits answered for this account's team."""

    today: int  # submissions made today
    total: int  # submissions made in all
    left: int  # submissions allowed now
    by_total: bool  # the competition's lifetime cap, not the daily one, is what limits

    @property
    def no_team(self) -> bool:
        """Kaggle answers all zeros for an account not yet on a team: it has never submitted."""
        return not (self.today or self.total or self.left or self.by_total)


def submission_limits(api: Any, creds: Credentials, competition: str,
                      action: str = "submit to") -> Limits:
    """How many submissions this account's team made today and may still make (asked before
    `action`: a 403 or 404 here says the competition is unknown or its rules not accepted)."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionLimitsRequest

    request = ApiGetSubmissionLimitsRequest()
    request.competition_name = competition
    try:
        got = call(api, "get_submission_limits", request)
    except Exception as exc:
        raise explain(exc, competition, creds, action) from None
    return Limits(today=int(got.num_today or 0), total=int(got.num_total or 0),
                  left=int(got.num_allowed_now or 0), by_total=bool(got.limited_by_total))


def _reset(now: datetime) -> str:
    """When Kaggle's daily count starts again: the next midnight UTC, and how long until then."""
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return f"00:00 UTC (in {duration((midnight - now).total_seconds())})"


def check_limits(limits: Limits, competition: str, now: datetime | None = None) -> str:
    """The line `submit` shows before it uploads; a UserError when no submission is left."""
    now = now or datetime.now(timezone.utc)
    if limits.no_team:
        return f"submissions left today: not counted yet (no submission to {competition!r} so far)"
    if limits.left <= 0 and limits.by_total:
        raise UserError(f"no submission left: this team has made all {limits.total} submissions "
                        f"{competition!r} allows in total, a cap that does not reset; nothing was "
                        "uploaded")
    if limits.left <= 0:
        raise UserError(f"no submission left today: this team has made {limits.today} submissions to "
                        f"{competition!r} today, Kaggle's daily limit; it resets at {_reset(now)}; "
                        "nothing was uploaded (--dry-run checks a submission without counting)")
    cap = "this competition's total cap" if limits.by_total else f"the count resets at {_reset(now)}"
    return f"submissions left today: {limits.left} ({limits.today} made today; {cap})"


# ---------------------------------------------------------------------------- paged listings


def _pages(api: Any, creds: Credentials, competition: str, method: str, request: Any,
           action: str, limit: int | None = None) -> list[Any]:
    """The `submissions` of a paged call, page after page, up to `limit` (None: all of them)."""
    items: list[Any] = []
    token = ""
    while limit is None or len(items) < limit:
        request.page_size = PAGE if limit is None else min(PAGE, limit - len(items))
        request.page_token = token
        try:
            page = call(api, method, request)
        except Exception as exc:
            raise explain(exc, competition, creds, action) from None
        items += page.submissions or []
        if not page.next_page_token or page.next_page_token == token or not page.submissions:
            break
        token = page.next_page_token
    return items if limit is None else items[:limit]


# ---------------------------------------------------------------------------- the public leaderboard


def rank(score: float, board: list[float]) -> tuple[int, int]:
    """Where `score` would stand among the other teams' scores `board` (best first, as Kaggle sorts
    them): its rank, shared with any equal score, and the number of teams counting it."""
    higher_is_better = not board or board[0] >= board[-1]
    better = sum(1 for s in board if (s > score if higher_is_better else s < score))
    return better + 1, len(board) + 1


def leaderboard_rank(api: Any, creds: Credentials, competition: str, score: str,
                     team: str | None) -> dict[str, Any]:
    """Where `score` would rank on the public leaderboard, leaving out the entry of `team` (the
    submitter's own, which holds its best score so far)."""
    from kagglesdk.competitions.types.competition_api_service import ApiGetLeaderboardRequest

    request = ApiGetLeaderboardRequest()
    request.competition_name = competition
    entries = _pages(api, creds, competition, "get_leaderboard", request, "read the leaderboard of")
    board = [float(e.score) for e in entries
             if e.score not in (None, "") and (team is None or e.team_name != team)]
    place, teams = rank(float(score), board)
    return {"rank": place, "teams": teams,
            "read_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def rank_text(leaderboard: dict[str, Any] | None) -> str:
    """`rank 3 of 1,204 (top 0.2%)`, or "-" when the rank was not read."""
    if not leaderboard:
        return "-"
    place, teams = leaderboard["rank"], leaderboard["teams"]
    return f"rank {place:,} of {teams:,} (top {100 * place / teams:.1f}%)"


# ---------------------------------------------------------------------------- past submissions


def runs_by_ref(runs_dir: Path) -> dict[int, tuple[str, dict[str, Any]]]:
    """Each submission ref recorded in a run of `runs_dir` → that run's name and its entry."""
    out: dict[int, tuple[str, dict[str, Any]]] = {}
    if Path(runs_dir).is_dir():
        for run_dir in sorted(Path(runs_dir).iterdir()):
            for entry in read_history(RunFiles(run_dir).kaggle):
                if entry.get("ref"):
                    out[int(entry["ref"])] = (run_dir.name, entry)
    return out


def _run_text(run: str, entry: dict[str, Any]) -> str:
    """The run a submission came from, and whether its CSV is still the file Kaggle scored."""
    path, sha = Path(str(entry.get("file", ""))), entry.get("sha256")
    if not sha:  # recorded before uploads were hashed
        return run
    if not path.is_file():
        return f"{run} (CSV gone)"
    return run if file_sha256(path) == sha else f"{run} (CSV changed since)"


def _when(date: Any) -> str:
    return f"{date:%Y-%m-%d %H:%M}" if isinstance(date, datetime) else str(date or "-")


def _short(text: str, width: int = 40) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def submission_rows(listed: list[Any], by_ref: dict[int, tuple[str, dict[str, Any]]]) -> list[dict]:
    """One row per listed submission: date, file, description, status, public score, local run."""
    rows = []
    for sub in listed:
        ref = int(sub.ref or 0)
        matched = by_ref.get(ref)
        rows.append({"date (UTC)": _when(sub.date), "ref": ref, "file": sub.file_name or "-",
                     "description": _short(sub.description), "status": status_name(sub),
                     "public score": public_score(sub) or "-",
                     "run": _run_text(*matched) if matched else "-"})
    return rows


def show_submissions(runs_dir: Path, competition: str, limit: int = 20, log: Log = print) -> list[dict]:
    """`python -m pipeline submissions`: the competition's latest submissions, newest first, each
    with the local run it came from; returns the rows shown."""
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    competition = parse_competition(competition)
    if limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    api, creds = connect()
    request = ApiListSubmissionsRequest()
    request.competition_name = competition
    listed = _pages(api, creds, competition, "list_submissions", request,
                    "list the submissions to", limit)
    if not listed:
        log(f"no submissions to {competition!r} yet; `make submit` uploads a run's")
        return []
    rows = submission_rows(listed, runs_by_ref(runs_dir))
    more = "; --limit N shows more" if len(rows) == limit else ""
    log(f"submissions to {competition!r}, newest first ({len(rows)} shown{more}):")
    log(table(rows))
    unmatched = sum(row["run"] == "-" for row in rows)
    if unmatched:
        log(f"{unmatched} of them match no run in {runs_dir}: sent from another machine or "
            "folder, as a --file without --run, or recorded only as a run's last submission "
            "before runs kept their history")
    return rows
