"""Watch a tuning study live: optuna-dashboard on the study's storage, served on 127.0.0.1 only.

The storage is the study's SQLite file `runs/tune/<study>/study.db` (where `tune` keeps it by
default) or any `--storage` URL, e.g. the PostgreSQL database machines share. The page refreshes
itself while `tune` runs; Ctrl-C stops the server.

    python -m pipeline dashboard --study s1
    python -m pipeline dashboard --study big --storage postgresql://user:pw@dbhost/optuna --port 8081
    make dashboard STUDY=s1
"""

from __future__ import annotations

from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pipeline.config import check_name
from pipeline.console import Log
from pipeline.errors import UserError
from pipeline.tuning.storage import default_storage, masked, open_storage
from pipeline.tuning.studyfiles import StudyFiles

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

HOST = "127.0.0.1"  # never another interface: the dashboard can also edit and delete studies
DEFAULT_PORT = 8080  # optuna-dashboard's own default


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the page polls; Ctrl-C must not wait for open requests


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # one line per poll otherwise
        pass


def storage_url(runs_dir: Path, study: str, storage: str | None = None) -> str:
    """The storage URL to watch: `storage`, else the study's SQLite file, which must exist."""
    check_name(study, "--study")
    if storage:
        return storage
    files = StudyFiles.of(runs_dir, study)
    if not files.db.is_file():
        raise UserError(f"--study {study!r}: no {files.db} (no such study in {runs_dir}); run "
                        f"`make tune STUDY={study}` first, or give its --storage URL")
    return default_storage(files)


def open_study(url: str, study: str) -> tuple[BaseStorage, int]:
    """The opened storage and the study's id in it; a storage without the study is refused."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():  # opening it would create an empty database
            raise UserError(f"--storage {url}: no such file")
    storage = open_storage(url)
    try:
        return storage, storage.get_study_id_from_name(study)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise UserError(f"study {study!r} is not in {masked(url)} (it has "
                        f"{', '.join(map(repr, names)) if names else 'no study'})") from None


def serve(url: str, study: str, port: int = DEFAULT_PORT, log: Log = print) -> None:
    """Serve optuna-dashboard for the study on 127.0.0.1:`port` (0: any free port) until Ctrl-C."""
    import optuna_dashboard

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be between 0 and 65535")
    storage, study_id = open_study(url, study)
    app = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(HOST, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror}); "
                        "choose another --port") from None
    try:
        log(f"optuna-dashboard: http://{HOST}:{server.server_port}/dashboard/studies/{study_id} "
            f"(study '{study}' in {masked(url)}; Ctrl-C to stop)")
        server.serve_forever()
    except KeyboardInterrupt:
        log("dashboard stopped")
    finally:
        server.server_close()
