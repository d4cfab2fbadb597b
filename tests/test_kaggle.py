"""`download` and `submit` against a fake Kaggle API: the real kaggle client, over a socket, no mocks.

Each CLI test runs `python -m pipeline …` in a subprocess whose client is pointed at `fake_kaggle`
(see its docstring), with a private HOME. The archive is built from the embedded sample, so the
expected row counts are lowered with the module's test hook; the real 42,000/28,000 check is
tested on its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.config import CODE_ROOT
from pipeline.errors import UserError
from pipeline.kaggle import archive as arc
from pipeline.kaggle import client as kg
from tests.conftest import copy_demo
from tests.fake_kaggle import KEY, SIGNATURE, TOKEN, FakeKaggle, client_env, write_kaggle_json

FILES = ("train.csv", "test.csv", "sample_submission.csv")
SAMPLE_ROWS = "1257,540"  # the embedded sample's train and test sizes
RULES = "You must accept this competition's rules before you'll be able to download files."


# ---------------------------------------------------------------------------- helpers


def make_zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip archive with these files (and symlink members pointing at `links` targets)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def cli(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` from the repo root; secrets must never show in its output."""
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=CODE_ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert all(secret not in r.stdout + r.stderr for secret in (KEY, TOKEN, SIGNATURE))
    return r


def user_error(r: subprocess.CompletedProcess[str]) -> str:
    """The single `error: …` line of a failed command (exit 2, no traceback, no usage dump)."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def submission_csv(path: Path, rows: int = 540) -> Path:
    path.write_text("ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in range(1, rows + 1)))
    return path


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sample(sample_dir: Path) -> dict[str, bytes]:
    """The three competition files, Kaggle format, from the embedded sample (conftest's sample_dir)."""
    return {name: (sample_dir / name).read_bytes() for name in FILES}


@pytest.fixture(scope="session")
def archive(sample: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zip") / "digit-recognizer.zip"
    path.write_bytes(make_zip(sample))
    return path


@pytest.fixture
def server(archive: Path):
    fake = FakeKaggle(archive=archive.read_bytes()).start()
    yield fake
    fake.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with a valid kaggle.json (owner-only, as it should be)."""
    write_kaggle_json(tmp_path / "home" / ".kaggle")
    return tmp_path / "home"


@pytest.fixture
def env(server: FakeKaggle, home: Path, tmp_path: Path) -> dict[str, str]:
    e = client_env(server, home, tmp_path / "hook")
    e[arc.ROWS_ENV] = SAMPLE_ROWS
    return e


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


# ---------------------------------------------------------------------------- download


def test_download_installs_archive(env, server, home, data, sample):
    (home / ".kaggle" / "kaggle.json").chmod(0o644)
    r = cli(env, "download", "--data", data)
    assert r.returncode == 0, r.stderr
    assert "readable by other users" in r.stderr and "chmod 600" in r.stderr
    assert sorted(p.name for p in data.iterdir()) == sorted(FILES)  # no temp folder or zip left
    assert all((data / name).read_bytes() == sample[name] for name in FILES)
    assert server.calls()[0] == "DownloadDataFiles"
    assert server.calls()[1].startswith("GET /files/digit-recognizer.zip")
    assert json.loads(server.requests[0].body) == {"competitionName": "digit-recognizer"}


def test_from_zip_then_skip_then_force(env, server, data, archive, sample):
    # With a token set, merely importing kaggle would call IntrospectToken: until --force, nothing may
    # reach the server (so --from-zip and the skip need no credentials and never load the client).
    env["KAGGLE_API_TOKEN"] = TOKEN
    r = cli(env, "download", "--from-zip", archive, "--data", data)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in data.iterdir()} == sample
    r = cli(env, "download", "--data", data)
    assert r.returncode == 0 and "skipping" in r.stdout
    assert server.requests == []
    r = cli(env, "download", "--data", data, "--force")
    assert r.returncode == 0, r.stderr
    assert "DownloadDataFiles" in server.calls()
    assert server.requests[-2].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("bad", [
    {"members": {"../evil.csv": b"x"}, "says": "'..'"},
    {"members": {"/tmp/kaggle-test-evil-absolute.csv": b"x"}, "says": "absolute path"},
    {"links": {"evil.csv": "/etc/passwd"}, "says": "symbolic link"},
], ids=["dotdot", "absolute", "symlink"])
def test_unsafe_archive_members_are_refused(data, sample, tmp_path, monkeypatch, bad):
    # In-process (the extraction needs no client); the CLI's error path is covered by the other tests.
    monkeypatch.setenv(arc.ROWS_ENV, SAMPLE_ROWS)
    zpath = tmp_path / "evil.zip"
    zpath.write_bytes(make_zip({**sample, **bad.get("members", {})}, bad.get("links")))
    with pytest.raises(UserError, match="refusing to extract member") as err:
        kg.download("digit-recognizer", data, from_zip=zpath)
    assert bad["says"] in str(err.value) and "\n" not in str(err.value)
    assert not data.exists()
    assert not (tmp_path / "evil.csv").exists() and not Path("/tmp/kaggle-test-evil-absolute.csv").exists()


def test_corrupt_download_leaves_data_untouched(env, server, data, sample):
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    server.archive = make_zip(sample)[:5000]  # truncated in transfer
    line = user_error(cli(env, "download", "--data", data))
    assert "corrupt or incomplete zip archive" in line and "download it again" in line
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


def test_wrong_shapes_are_named(data, sample, tmp_path, monkeypatch):
    monkeypatch.setenv(arc.ROWS_ENV, SAMPLE_ROWS)
    lines = sample["train.csv"].splitlines(keepends=True)
    zpath = tmp_path / "short.zip"
    zpath.write_bytes(make_zip({**sample, "train.csv": b"".join(lines[:1001])}))
    with pytest.raises(UserError, match="train.csv is 1,000 rows × 785 columns, expected 1,257 × 785"):
        kg.download("digit-recognizer", data, from_zip=zpath)
    assert not data.exists()


def test_real_size_check_rejects_a_small_archive(env, data, archive):
    del env[arc.ROWS_ENV]
    line = user_error(cli(env, "download", "--from-zip", archive, "--data", data))
    assert "train.csv is 1,257 rows × 785 columns, expected 42,000 × 785" in line
    assert "test.csv is 540 rows × 784 columns, expected 28,000 × 784" in line
    assert "sample_submission.csv is 540 rows × 2 columns, expected 28,000 × 2" in line
    assert not data.exists()


def test_bad_credentials_401(env, server, home, data):
    write_kaggle_json(home / ".kaggle", key="expired0000")
    line = user_error(cli(env, "download", "--data", data))
    assert "401" in line and "create a new token" in line and "kaggle.json" in line
    assert not data.exists()


def test_rules_not_accepted_403(env, server, data):
    server.errors["DownloadDataFiles"] = (403, RULES)
    line = user_error(cli(env, "download", "--data", data))
    assert "accept the competition rules" in line
    assert "https://www.kaggle.com/competitions/digit-recognizer/rules" in line
    assert not data.exists()


def test_unknown_competition_404(env, server, data):
    line = user_error(cli(env, "download", "--data", data, "--competition",
                          "https://www.kaggle.com/competitions/no-such-contest/data"))
    assert "'no-such-contest' not found" in line
    assert json.loads(server.requests[0].body) == {"competitionName": "no-such-contest"}


def test_network_failure(env, server, data):
    server.stop()
    line = user_error(cli(env, "download", "--data", data))
    assert "could not reach Kaggle" in line


def test_missing_credentials(env, server, home, data):
    (home / ".kaggle" / "kaggle.json").unlink()
    line = user_error(cli(env, "download", "--data", data))
    assert "no Kaggle credentials found" in line and "https://www.kaggle.com/settings/api" in line
    assert "~/.kaggle/kaggle.json" in line
    assert server.requests == [] and not data.exists()


# ---------------------------------------------------------------------------- submit


@pytest.fixture
def project(tmp_path: Path, sample: dict[str, bytes]) -> dict[str, Path]:
    """A finished run 'r1' (config.json, metrics.json) with its submission CSV, and a data folder."""
    runs, subs, data = tmp_path / "runs", tmp_path / "submissions", tmp_path / "data"
    for d in (runs / "r1", subs, data):
        d.mkdir(parents=True)
    (data / "sample_submission.csv").write_bytes(sample["sample_submission.csv"])
    (runs / "r1" / "config.json").write_text(json.dumps({"profile": "tiny", "folds": 2}))
    (runs / "r1" / "metrics.json").write_text(json.dumps({"run": "r1", "cv_accuracy": 0.98765432}))
    csv = submission_csv(subs / "r1.csv")
    os.utime(runs / "r1" / "metrics.json", (1e9, 1e9))  # trained before its CSV was built
    return {"runs": runs, "subs": subs, "data": data, "csv": csv}


def dirs(p: dict[str, Path]) -> list[object]:
    return ["--data", p["data"], "--runs-dir", p["runs"], "--submissions-dir", p["subs"]]


def history_of(project: dict[str, Path]) -> list[dict]:
    """Run r1's submissions, oldest first, as `submit` recorded them."""
    return json.loads((project["runs"] / "r1" / "kaggle_submission.json").read_text())["submissions"]


def record_of(project: dict[str, Path]) -> dict:
    """Run r1's latest submission."""
    return history_of(project)[-1]


def test_submit_latest_run_waits_for_score(env, server, project):
    r = cli(env, "submit", *dirs(project), "--timeout", 30)
    assert r.returncode == 0, r.stderr
    assert "public score: 0.98765" in r.stdout
    # Before anything is sent: which run, how it was picked, its estimates and the file.
    said = r.stdout[:r.stdout.index("submitted: ref")]
    assert "run 'r1' (profile tiny; the most recently trained run" in said
    assert "CV accuracy 0.9877" in said and "holdout estimate: none" in said
    assert f"file {project['csv']} (540 rows, checked against sample_submission.csv)" in said
    # Before the upload: the submissions left today; after the score: where it would rank.
    assert "submissions left today: 5 (0 made today; the count resets at 00:00 UTC (in " in said
    assert server.calls() == ["GetSubmissionLimits", "StartSubmissionUpload", "PUT /upload/blob1",
                              "CreateSubmission", "GetSubmission", "GetSubmission", "GetLeaderboard"]
    assert server.uploads["blob1"] == project["csv"].read_bytes()
    sent = json.loads(server.requests[3].body)
    assert sent["submissionDescription"] == "r1: profile tiny, CV accuracy 0.9877"
    # 0.98765 among the others (1.0, 0.995, 0.98, 0.97; the team's own 0.99 left out): 3rd of 5.
    assert "it would stand at rank 3 of 5 (top 60.0%)" in r.stdout
    record = record_of(project)
    assert record["ref"] == 40_000_001 and record["status"] == "COMPLETE"
    assert record["public_score"] == "0.98765" and record["message"] == sent["submissionDescription"]
    assert record["competition"] == "digit-recognizer" and record["submitted_at"] and record["scored_at"]
    assert record["sha256"] == hashlib.sha256(project["csv"].read_bytes()).hexdigest()
    assert record["leaderboard"]["rank"] == 3 and record["leaderboard"]["teams"] == 5


def test_submit_timeout_keeps_the_ref(env, server, project):
    server.pending_polls = 1000
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--message", "mine", "--timeout", 1)
    assert r.returncode == 0, r.stderr
    assert "not scored after 1 s" in r.stderr
    record = record_of(project)
    assert record["status"] == "PENDING" and record["ref"] == 40_000_001 and record["message"] == "mine"


def test_submit_file_no_wait(env, server, project, tmp_path):
    csv = submission_csv(tmp_path / "mine.csv")
    r = cli(env, "submit", *dirs(project), "--file", csv, "--no-wait")
    assert r.returncode == 0, r.stderr
    assert server.calls() == ["GetSubmissionLimits", "StartSubmissionUpload", "PUT /upload/blob1",
                              "CreateSubmission"]
    assert json.loads(server.requests[3].body)["submissionDescription"] == "mine.csv"
    assert not (project["runs"] / "r1" / "kaggle_submission.json").exists()


def test_submit_upload_rejected(env, server, project):
    server.upload_status = 403
    line = user_error(cli(env, "submit", *dirs(project), "--file", project["csv"]))
    assert "did not accept the upload" in line and "nothing was submitted" in line
    assert "CreateSubmission" not in server.calls()


def test_submit_daily_limit_shows_kaggles_message(env, server, project):
    said = "Submission not allowed: Your team has used its daily Submission allowance (5) today."
    server.errors["CreateSubmission"] = (400, said)
    line = user_error(cli(env, "submit", *dirs(project), "--run", "r1"))
    assert said in line
    assert not (project["runs"] / "r1" / "kaggle_submission.json").exists()


def test_submit_dry_run_sends_nothing(env, server, project):
    env["KAGGLE_API_TOKEN"] = TOKEN  # importing kaggle would call IntrospectToken
    r = cli(env, "submit", *dirs(project), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "r1.csv" in r.stdout and "CV accuracy 0.9877" in r.stdout
    assert "not counted against the daily limit" in r.stdout
    assert server.requests == []  # not even the submissions left today are asked


def test_submit_invalid_file_is_not_sent(env, server, project, tmp_path):
    csv = submission_csv(tmp_path / "short.csv", rows=10)
    line = user_error(cli(env, "submit", *dirs(project), "--file", csv))
    assert "short.csv: has 10 rows, expected 540" in line
    assert server.requests == []


# ---------------------------------------------------------------------------- Kaggle's unhappy answers


def test_a_submission_scored_error_is_shown_and_recorded(env, server, project):
    server.status = "ERROR"
    server.error_description = "Submission must have 28000 rows, found 540"
    line = user_error(cli(env, "submit", *dirs(project), "--run", "r1", "--timeout", 30))
    assert f"Kaggle could not score submission 40000001: {server.error_description}" in line
    record = record_of(project)
    assert record["status"] == "ERROR" and record["error"] == server.error_description
    assert record["public_score"] is None


def test_rate_limited_status_checks_keep_to_the_timeout(env, server, project):
    # The client on its own would sleep out Retry-After (up to ten times) inside one call.
    server.errors["GetSubmission"] = (429, "Too many requests", {"Retry-After": "600"})
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--timeout", 1)
    assert r.returncode == 0, r.stderr
    assert "Will retry" not in r.stderr and "Kaggle is rate-limiting status checks (429)" in r.stdout
    assert "submission 40000001 not scored after 1 s" in r.stderr
    record = record_of(project)
    assert record["status"] == "PENDING" and record["ref"] == 40_000_001


def test_an_unknown_competition_answered_403_names_both_causes(env, server, project):
    server.unknown_competition = 403
    line = user_error(cli(env, "submit", *dirs(project), "--run", "r1", "--competition", "no-such-contest"))
    assert "'no-such-contest'" in line and "Permission 'competitions.participate' was denied" in line
    assert "no competition is called 'no-such-contest'" in line and "accept its rules" in line
    assert server.calls() == ["GetSubmissionLimits"]  # refused before any upload
    assert not (project["runs"] / "r1" / "kaggle_submission.json").exists()


def test_a_failed_storage_upload_never_shows_the_signed_url(env, server, project):
    server.storage_unreachable = True
    line = user_error(cli(env, "submit", *dirs(project), "--run", "r1"))  # cli() checks SIGNATURE
    assert "did not accept the upload" in line and "nothing was submitted" in line
    assert "<url>" in line  # what the client said is kept, its URL is not
    assert "CreateSubmission" not in server.calls()


def test_complete_without_a_public_score_is_recorded_as_pending(env, server, project):
    server.score = None
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--timeout", 1)
    assert r.returncode == 0, r.stderr
    assert "public score:" not in r.stdout and "not scored after 1 s" in r.stderr
    record = record_of(project)
    assert record["status"] == "PENDING" and record["public_score"] is None


# ---------------------------------------------------------------------------- the competition's records


def test_no_submission_left_today_refuses_before_uploading(env, server, project):
    for i in range(5):  # today's five, made elsewhere
        server.add_submission(f"elsewhere {i}", "submission.csv", "0.99000")
    line = user_error(cli(env, "submit", *dirs(project), "--run", "r1"))
    assert "no submission left today" in line and "made 5 submissions to 'digit-recognizer' today" in line
    assert re.search(r"resets at 00:00 UTC \(in \d+h\d\dm\)", line) and "nothing was uploaded" in line
    assert server.calls() == ["GetSubmissionLimits"] and server.uploads == {}
    assert not (project["runs"] / "r1" / "kaggle_submission.json").exists()


def test_a_rate_limited_limits_check_uploads_nothing(env, server, project):
    server.errors["GetSubmissionLimits"] = (429, "Too many requests", {"Retry-After": "600"})
    r = cli(env, "submit", *dirs(project), "--run", "r1")
    line = user_error(r)
    assert "Kaggle is rate-limiting this account (429: Too many requests)" in line
    assert "Will retry" not in r.stderr  # one request, not the client's ten
    assert server.calls() == ["GetSubmissionLimits"] and server.uploads == {}


def test_the_leaderboard_is_read_page_by_page(env, server, project):
    server.leaderboard = [(f"team {i}", f"{1 - i * 0.0001:.5f}") for i in range(250)]
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--timeout", 30)
    assert r.returncode == 0, r.stderr
    pages = [json.loads(q.body) for q in server.requests if q.path.endswith("/GetLeaderboard")]
    assert [(q["pageSize"], q.get("pageToken", "")) for q in pages] == [(100, ""), (100, "100"),
                                                                        (100, "200")]
    # 124 teams score above 0.98765 (1.0000 … 0.9877), none is this team's own.
    assert "it would stand at rank 125 of 251 (top 49.8%)" in r.stdout
    assert record_of(project)["leaderboard"]["rank"] == 125


def test_an_unreadable_leaderboard_leaves_the_score_recorded(env, server, project):
    server.errors["GetLeaderboard"] = (429, "Too many requests")
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--timeout", 30)
    assert r.returncode == 0, r.stderr
    assert "public score: 0.98765" in r.stdout
    assert "the public leaderboard was not read: Kaggle is rate-limiting this account (429" in r.stderr
    record = record_of(project)
    assert record["public_score"] == "0.98765" and "leaderboard" not in record


def test_submissions_are_listed_with_the_run_each_came_from(env, server, project):
    other = server.add_submission("from my laptop", "laptop.csv", "0.99100")
    r = cli(env, "submit", *dirs(project), "--run", "r1", "--message", "r1 try", "--no-wait")
    assert r.returncode == 0, r.stderr
    ours = record_of(project)["ref"]
    assert [e["ref"] for e in history_of(project)] == [ours]
    r = cli(env, "submissions", "--runs-dir", project["runs"])
    assert r.returncode == 0, r.stderr
    rows = {int(line.split()[2]): line for line in r.stdout.splitlines()
            if re.match(r"\s*\d{4}-\d\d-\d\d", line)}
    assert set(rows) == {ours, other}
    assert rows[ours].split()[-1] == "r1" and "r1 try" in rows[ours] and "submission.csv" in rows[ours]
    assert rows[other].split()[-1] == "-" and "laptop.csv" in rows[other] and "0.99100" in rows[other]
    assert "from my laptop" in rows[other] and "COMPLETE" in rows[other]
    assert "1 of them match no run in" in r.stdout
    asked = json.loads(server.requests[-1].body)
    assert asked["competitionName"] == "digit-recognizer" and asked["pageSize"] == 20
    # The sha256 recorded with the upload tells when the run's CSV is no longer the file scored.
    project["csv"].write_text(project["csv"].read_text().replace("1,1\n", "1,7\n", 1))
    r = cli(env, "submissions", "--runs-dir", project["runs"], "--limit", 1)
    assert r.returncode == 0, r.stderr
    assert "r1 (CSV changed since)" in r.stdout and "laptop.csv" not in r.stdout


def test_submissions_none_yet_and_rate_limited(env, server, project):
    r = cli(env, "submissions", "--runs-dir", project["runs"])
    assert r.returncode == 0, r.stderr
    assert "no submissions to 'digit-recognizer' yet" in r.stdout
    server.errors["ListSubmissions"] = (429, "Too many requests", {"Retry-After": "600"})
    r = cli(env, "submissions", "--runs-dir", project["runs"])
    assert "Kaggle is rate-limiting this account (429" in user_error(r) and "Will retry" not in r.stderr


# ---------------------------------------------------------------------------- the report after submit


def test_the_report_shows_the_kaggle_score_of_a_real_submission(env, server, demo_once, tmp_path):
    t = copy_demo(demo_once, tmp_path / "copy")
    # An earlier submission, recorded as `submit` did before it kept a history: the last one alone.
    earlier = {"competition": "digit-recognizer", "ref": 39_999_999, "file": "old.csv",
               "message": "before the history", "status": "COMPLETE", "public_score": "0.97000",
               "error": None, "submitted_at": "2024-01-01T00:00:00+00:00"}
    (t.run_dir / "kaggle_submission.json").write_text(json.dumps(earlier))
    r = cli(env, "submit", "--run", "demo", "--data", t.data, "--runs-dir", t.runs,
            "--submissions-dir", t.subs, "--timeout", 30)
    assert r.returncode == 0, r.stderr
    history = json.loads((t.run_dir / "kaggle_submission.json").read_text())["submissions"]
    assert history[0] == earlier and len(history) == 2  # the legacy record kept, the upload appended
    record = history[1]
    assert record["sha256"] == hashlib.sha256((t.subs / "demo.csv").read_bytes()).hexdigest()
    page = (t.run_dir / "report.html").read_text()  # rebuilt by submit
    card = re.search(r'<div class="label">Kaggle public score</div>(.*?)</div></div>', page).group(1)
    assert ">0.98765<" in card and record["submitted_at"] in card and "make submit" not in card
    assert "public leaderboard rank 3 of 5 (top 60.0%)" in card and "latest of 2 submissions" in card
    kv = page[page.index("<h3>Kaggle</h3>"):page.index("<h3>Kaggle submissions</h3>")]
    assert record["submitted_at"] in kv and record["scored_at"] in kv and record["sha256"] in kv
    # The run's history, newest first.
    rows = re.findall(r"<tr>(.*?)</tr>", page[page.index("<h3>Kaggle submissions</h3>"):])
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows[1:3]]
    assert cells[0][:2] == [record["submitted_at"], str(record["ref"])]
    assert cells[0][2] == f"demo.csv ({record['sha256'][:12]})" and cells[0][5:] == [
        "0.98765", "rank 3 of 5 (top 60.0%)"]
    assert cells[1] == [earlier["submitted_at"], "39999999", "old.csv", "before the history", "COMPLETE",
                        "0.97000", "-"]


# ---------------------------------------------------------------------------- units (in-process)


@pytest.mark.parametrize("value", [
    "digit-recognizer", " digit-recognizer ", "https://www.kaggle.com/competitions/digit-recognizer",
    "https://www.kaggle.com/competitions/digit-recognizer/data?select=train.csv",
    "kaggle.com/c/digit-recognizer", "http://kaggle.com/c/digit-recognizer/overview",
])
def test_competition_slug_from_urls(value):
    assert kg.parse_competition(value) == "digit-recognizer"


@pytest.mark.parametrize("value", ["", "digit recognizer", "../etc", "https://example.com/c/digit-recognizer",
                                   "-rm", "owner/dataset"])
def test_competition_slug_rejected(value):
    with pytest.raises(UserError, match="not a Kaggle competition slug"):
        kg.parse_competition(value)


def test_crc_corruption_is_reported(tmp_path, sample):
    raw = bytearray(make_zip({"train.csv": sample["train.csv"]}))
    raw[len(raw) // 3] ^= 0xFF  # inside the compressed data
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(bytes(raw))
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="corrupt or incomplete zip archive"):
        arc.extract_archive(zpath, tmp_path / "out")


def test_size_cap(tmp_path):
    zpath = tmp_path / "bomb.zip"
    zpath.write_bytes(make_zip({"train.csv": b"0" * 100_000}))
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="over the .* limit"):
        arc.extract_archive(zpath, tmp_path / "out", limit=10_000)
    assert list((tmp_path / "out").iterdir()) == []


def test_malformed_kaggle_json(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid kaggle.json"):
        kg.find_credentials()
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert kg.find_credentials().source == "KAGGLE_USERNAME/KAGGLE_KEY"


def test_rank_counts_only_better_scores_in_the_boards_own_order():
    from pipeline.kaggle.records import rank

    assert rank(0.99, [1.0, 0.995, 0.99, 0.98]) == (3, 5)  # a tie shares the better rank
    assert rank(0.5, [0.1, 0.2, 0.9]) == (3, 4)  # an error metric: lower is better
    assert rank(0.99, []) == (1, 1)


def test_the_limits_line_for_a_first_submission_and_a_lifetime_cap():
    from datetime import datetime, timezone

    from pipeline.kaggle.records import Limits, check_limits

    now = datetime(2025, 6, 1, 21, 30, tzinfo=timezone.utc)
    # Kaggle answers all zeros for an account that has never submitted: that is no refusal.
    assert "not counted yet" in check_limits(Limits(0, 0, 0, False), "digit-recognizer", now)
    assert check_limits(Limits(2, 9, 3, False), "digit-recognizer", now) == (
        "submissions left today: 3 (2 made today; the count resets at 00:00 UTC (in 2h30m))")
    with pytest.raises(UserError, match="all 50 submissions 'digit-recognizer' allows in total, a cap "
                                        "that does not reset"):
        check_limits(Limits(1, 50, 0, True), "digit-recognizer", now)


def test_a_history_is_read_from_either_shape(tmp_path):
    from pipeline.kaggle import history

    path = tmp_path / "kaggle_submission.json"
    assert history.read_history(path) == [] and history.latest(path) is None
    path.write_text(json.dumps({"ref": 7, "status": "PENDING"}))  # the single record of old
    assert history.read_history(path) == [{"ref": 7, "status": "PENDING"}]
    history.record(path, {"ref": 7, "status": "COMPLETE"})  # its score came: replaced, not added
    history.record(path, {"ref": 8, "status": "PENDING"})
    assert json.loads(path.read_text()) == {"submissions": [{"ref": 7, "status": "COMPLETE"},
                                                            {"ref": 8, "status": "PENDING"}]}
    assert history.latest(path) == {"ref": 8, "status": "PENDING"}
