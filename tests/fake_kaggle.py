"""A fake Kaggle API server for the tests: stdlib http.server on 127.0.0.1, in a thread.

It answers the calls kaggle 2.2.5 / kagglesdk 0.1.38 really make (JSON POSTs to
/api/v1/<Service>/<Method>): DownloadDataFiles (a 302 to the archive), StartSubmissionUpload → PUT to
the upload URL → CreateSubmission, GetSubmission for polling, and IntrospectToken for access-token
sign-in; the competition's records: GetSubmissionLimits (from the submissions made and
`daily_limit`), ListSubmissions and GetLeaderboard (`leaderboard`), both paged as Kaggle pages them
(pageSize, pageToken → nextPageToken; a submission made elsewhere is added with `add_submission`);
and for kernels SaveKernel, GetKernelSessionStatus (each version stepping through its statuses,
one per check), ListKernelSessionOutput (the log, and the files by URL) and
GetAcceleratorQuotaStatistics. Every request is recorded, so a test can assert that nothing (or
exactly what) was sent.

On request from a test it also gives Kaggle's unhappy answers: any error (with headers, e.g. a 429
with Retry-After) for a named method (`errors`), 403 instead of 404 for an unknown competition
(`unknown_competition`), a submission scored ERROR with an `errorDescription` (`status`), a
COMPLETE one without a `publicScore` (`score=None`), and a signed upload URL the client cannot use
(`storage_unreachable`): its PUT fails at once, as an unreachable storage host does after the
client's own retries, and the client prints the exception, signed URL and all.

The client is pointed here by `client_env()`: KAGGLE_API_ENVIRONMENT=LOCALHOST selects kagglesdk's LOCAL
endpoint, and a `sitecustomize.py` written next to the test replaces that endpoint ("http://localhost",
port 80, in kagglesdk.kaggle_env._env_to_endpoint, which no env var can change) with this server's URL.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API = "/api/v1/"
TEAM_ENTRY = "Fake Team"  # FakeKaggle.team's entry on the default leaderboard
USERNAME, KEY, TOKEN = "fakeuser", "0123456789abcdef0123456789abcdef", "KGAT_fake_token_0123456789"
# The signature a storage upload URL carries, as Google Cloud Storage's signed URLs do: a secret.
SIGNATURE = "fakesignature0123456789abcdef"
SIGNED_QUERY = f"X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature={SIGNATURE}"

SITECUSTOMIZE = '''\
"""Test hook: send kagglesdk's LOCALHOST environment to the fake Kaggle server in FAKE_KAGGLE_URL."""
import os

if os.environ.get("FAKE_KAGGLE_URL"):
    from kagglesdk import kaggle_env

    kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = os.environ["FAKE_KAGGLE_URL"]
'''


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeKaggle:
    """Server state: what to serve, which errors to answer with, and every request seen."""

    archive: bytes = b""
    competition: str = "digit-recognizer"
    # method name -> (status, message) or (status, message, extra headers)
    errors: dict[str, tuple] = field(default_factory=dict)
    unknown_competition: int = 404  # Kaggle has answered an unknown slug with 403 as well
    upload_status: int = 200
    storage_unreachable: bool = False  # the signed upload URL cannot be used
    pending_polls: int = 1  # GetSubmission answers PENDING this many times, then `status`
    status: str = "COMPLETE"  # or "ERROR", with error_description
    error_description: str = ""
    score: str | None = "0.98765"  # None: COMPLETE without a publicScore
    requests: list[Seen] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    submissions: dict[int, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    # Kernels (kaggle-train): "owner/slug" -> its versions, oldest first, each a dict with the
    # SaveKernel request ("request"), the statuses it steps through, one per status check
    # ("steps"), its "failure" message, "log" and output "files" (name -> bytes). A version
    # pushed here gets the kernel_* values below; a test may put older versions in first.
    kernels: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kernel_steps: tuple[str, ...] = ("QUEUED", "RUNNING", "COMPLETE")
    kernel_failure: str = ""
    kernel_log: str = ""
    kernel_files: dict[str, bytes] = field(default_factory=dict)
    kernel_429: int = 0  # status checks answered 429 (Retry-After: 0) before the real answer
    gpu_quota: tuple[float, float] = (3600.0, 30 * 3600.0)  # seconds used, allowed this week
    daily_limit: int = 5  # submissions a day; all made on the fake count as today's
    team: str = TEAM_ENTRY  # this account's team, as submissions and the leaderboard name it
    # The public leaderboard, best first: (teamName, score); this account's own entry among them.
    leaderboard: list[tuple[str, str]] = field(default_factory=lambda: [
        ("Top Team", "1.00000"), ("Second", "0.99500"), (TEAM_ENTRY, "0.99000"), ("Fourth", "0.98000"),
        ("Fifth", "0.97000")])

    def start(self) -> FakeKaggle:
        """Serve on a free port of 127.0.0.1 until stop()."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self) -> list[str]:
        """The API methods called, in order ("DownloadDataFiles", "PUT /upload/…", "GET /files/…"),
        without query strings."""
        out = []
        for r in self.requests:
            path = r.path.split("?")[0]
            out.append(path[len(API):].split("/")[-1] if path.startswith(API) else f"{r.method} {path}")
        return out

    def add_submission(self, description: str, file_name: str, score: str | None,
                       status: str = "COMPLETE", date: str = "2023-12-31T23:00:00Z") -> int:
        """A submission made elsewhere (another machine, the website): listed, never polled."""
        ref = 40_000_000 + len(self.submissions) + 1
        self.submissions[ref] = {"ref": ref, "description": description, "fileName": file_name,
                                 "status": status, "date": date, "teamName": self.team,
                                 **({"publicScore": score} if score is not None else {})}
        return ref

    def authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
        return auth in (basic, f"Bearer {TOKEN}")


def client_env(server: FakeKaggle | None, home: Path, hook_dir: Path) -> dict[str, str]:
    """Environment for a `python -m pipeline` subprocess: the fake server, a private HOME, no credentials."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "PYTHONPATH": str(hook_dir), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
    })
    if server is not None:
        env["FAKE_KAGGLE_URL"] = server.url
    return env


def write_kaggle_json(config_dir: Path, username: str = USERNAME, key: str = KEY, mode: int = 0o600) -> Path:
    """A kaggle.json like the one kaggle.com hands out."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "kaggle.json"
    path.write_text(json.dumps({"username": username, "key": key}))
    path.chmod(mode)
    return path


def _handler(state: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _record(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(Seen(self.command, self.path, dict(self.headers), body))
            return body

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            # Kaggle's error shape; the client raises HTTPError(message) for it.
            self._send(status, json.dumps({"code": status, "message": message}).encode(),
                       headers=headers)

        def do_GET(self) -> None:
            self._record()
            if self.path.startswith("/kernel-output/"):
                return self._kernel_file()
            if self.path.startswith("/files/") and state.archive:
                self._send(200, state.archive, "application/zip",
                           {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
            else:
                self._error(404, "Not found")

        def do_PUT(self) -> None:
            body = self._record()
            token = self.path.split("?")[0].rsplit("/", 1)[-1]
            if self.path.startswith("/upload/") and state.upload_status in (200, 201):
                state.uploads[token] = body
                self._json(state.upload_status, {})
            else:
                self._error(state.upload_status if state.upload_status >= 400 else 404, "upload rejected")

        def do_POST(self) -> None:
            body = self._record()
            if not self.path.startswith(API):
                return self._error(404, "Not found")
            method = self.path.rsplit("/", 1)[-1]
            try:
                req = json.loads(body or b"{}")
            except json.JSONDecodeError:
                return self._error(400, "bad JSON")
            if method == "IntrospectToken":
                ok = req.get("token") == TOKEN
                return self._json(200, {"active": ok, "username": USERNAME if ok else ""})
            if method in state.errors:
                return self._error(*state.errors[method])
            if not state.authorized(dict(self.headers)):
                return self._error(401, "Unauthenticated")
            comp = req.get("competitionName")
            if comp is not None and comp != state.competition:
                if state.unknown_competition == 403:
                    return self._error(403, "Permission 'competitions.participate' was denied")
                return self._error(404, f"Competition '{comp}' not found")
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                return self._error(404, f"no fake for {method}")
            handler(req)

        def _api_DownloadDataFiles(self, req: dict[str, Any]) -> None:
            where = f"{state.url}/files/{state.competition}.zip?token=signed-url-secret"
            self._send(302, b"", "text/plain", {"Location": where})

        def _api_StartSubmissionUpload(self, req: dict[str, Any]) -> None:
            token = f"blob{len(state.uploads) + 1}"
            url = f"{state.url}/upload/{token}"
            if state.storage_unreachable:  # a port no client can open: the PUT fails at once
                url = f"http://127.0.0.1:99999/upload/{token}"
            self._json(200, {"token": token, "createUrl": f"{url}?{SIGNED_QUERY}"})

        def _api_CreateSubmission(self, req: dict[str, Any]) -> None:
            token = req.get("blobFileTokens")
            if token not in state.uploads:
                return self._error(400, f"Unknown blob token {token!r}")
            ref = 40_000_000 + len(state.submissions) + 1
            state.submissions[ref] = {"ref": ref, "description": req.get("submissionDescription", ""),
                                      "fileName": "submission.csv", "teamName": state.team, "polls": 0}
            self._json(200, {"message": "Successfully submitted to Digit Recognizer", "ref": ref})

        def _submission(self, ref: int) -> dict[str, Any]:
            sub = state.submissions[ref]
            sub["polls"] += 1
            done = sub["polls"] > state.pending_polls
            out = {k: v for k, v in sub.items() if k != "polls"}
            out.update(status=state.status if done else "PENDING", date="2024-01-01T00:00:00Z")
            if done and state.status == "ERROR":
                out["errorDescription"] = state.error_description
            elif done and state.score is not None:
                out["publicScore"] = state.score
            return out

        def _api_GetSubmission(self, req: dict[str, Any]) -> None:
            ref = int(req.get("ref", 0))
            if ref not in state.submissions:
                return self._error(404, f"Submission {ref} not found")
            self._json(200, self._submission(ref))

        # --- kernels: SaveKernel, GetKernelSessionStatus, ListKernelSessionOutput, the quota

        def _api_SaveKernel(self, req: dict[str, Any]) -> None:
            slug = req.get("slug", "")
            versions = state.kernels.setdefault(slug, [])
            versions.append({"request": req, "steps": list(state.kernel_steps), "polls": 0,
                             "failure": state.kernel_failure, "log": state.kernel_log,
                             "files": dict(state.kernel_files)})
            bad = [c for c in req.get("competitionDataSources", []) if c != state.competition]
            self._json(200, {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}",
                             "versionNumber": len(versions), "invalidCompetitionSources": bad})

        def _kernel_version(self, req: dict[str, Any]) -> dict[str, Any] | None:
            """The version a request names ("v2"); unnamed, the newest one that has a session
            (is past QUEUED), as Kaggle may answer right after a push: an older version's."""
            versions = state.kernels.get(f"{req.get('userName')}/{req.get('kernelSlug')}", [])
            label = req.get("versionLabel")
            if label:
                number = int(label.lstrip("v"))
                return versions[number - 1] if 0 < number <= len(versions) else None
            started = [v for v in versions if v["steps"][min(v["polls"], len(v["steps"]) - 1)] != "QUEUED"]
            return started[-1] if started else None

        @staticmethod
        def _kernel_step(version: dict[str, Any]) -> str:
            return version["steps"][min(version["polls"], len(version["steps"]) - 1)]

        def _api_GetKernelSessionStatus(self, req: dict[str, Any]) -> None:
            if state.kernel_429 > 0:
                state.kernel_429 -= 1
                return self._error(429, "Too many requests", {"Retry-After": "0"})
            version = self._kernel_version(req)
            if version is None:
                return self._error(404, "Kernel session not found")
            status = self._kernel_step(version)
            version["polls"] += 1
            out: dict[str, Any] = {"status": status}
            if status == "ERROR":
                out["failureMessage"] = version["failure"]
            self._json(200, out)

        def _api_ListKernelSessionOutput(self, req: dict[str, Any]) -> None:
            version = self._kernel_version(req)
            if version is None:
                return self._error(404, "Kernel session not found")
            status = self._kernel_step(version)
            slug = f"{req.get('userName')}/{req.get('kernelSlug')}"
            number = state.kernels[slug].index(version) + 1
            files = [{"fileName": name, "url": f"{state.url}/kernel-output/{slug}/v{number}/{name}?"
                      f"{SIGNED_QUERY}"} for name in version["files"]] if status == "COMPLETE" else []
            entries = [{"stream_name": "stdout", "time": 0.1 * i, "data": line + "\n"}
                       for i, line in enumerate(version["log"].splitlines())]
            self._json(200, {"files": files, "log": json.dumps(entries) if status != "QUEUED" else ""})

        def _kernel_file(self) -> None:
            owner, slug, label, name = self.path.split("?")[0].split("/")[2:6]
            versions = state.kernels.get(f"{owner}/{slug}", [])
            number = int(label.lstrip("v"))
            data = versions[number - 1]["files"].get(name) if 0 < number <= len(versions) else None
            if data is None:
                return self._error(404, "Not found")
            self._send(200, data, "application/octet-stream")

        def _api_GetAcceleratorQuotaStatistics(self, req: dict[str, Any]) -> None:
            used, total = state.gpu_quota
            self._json(200, {"quotaRefreshTime": "2026-01-05T00:00:00Z",
                             "gpuQuota": {"timeUsed": f"{used:.0f}s", "timeReserved": "0s",
                                          "totalTimeAllowed": f"{total:.0f}s"},
                             "tpuQuota": {"timeUsed": "0s", "totalTimeAllowed": f"{20 * 3600}s"}})

        def _api_ListSubmissions(self, req: dict[str, Any]) -> None:
            refs = sorted(state.submissions, reverse=True)  # newest first
            # Those made here step through their polls; those added elsewhere are as added.
            self._page(req, [self._submission(r) if "polls" in state.submissions[r]
                             else state.submissions[r] for r in refs])

        def _api_GetSubmissionLimits(self, req: dict[str, Any]) -> None:
            made = len(state.submissions)
            self._json(200, {"numToday": made, "numTotal": made,
                             "numAllowedNow": max(0, state.daily_limit - made), "limitedByTotal": False})

        def _api_GetLeaderboard(self, req: dict[str, Any]) -> None:
            self._page(req, [{"teamId": i + 1, "teamName": team, "score": score,
                              "submissionDate": "2024-01-01T00:00:00Z"}
                             for i, (team, score) in enumerate(state.leaderboard)])

        def _page(self, req: dict[str, Any], items: list[dict[str, Any]]) -> None:
            # Kaggle's paging: pageSize items from the offset the pageToken names, and the next token.
            start, size = int(req.get("pageToken") or 0), int(req.get("pageSize") or 20)
            more = start + size < len(items)
            self._json(200, {"submissions": items[start:start + size],
                             "nextPageToken": str(start + size) if more else ""})

    return Handler
