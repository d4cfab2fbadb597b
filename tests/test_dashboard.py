"""Tests for `python -m pipeline dashboard`: the real CLI serves optuna-dashboard on 127.0.0.1.

The study is built with Optuna directly in the SQLite file `tune` would use, so no training
runs; the test reads the dashboard's JSON API (`/api/studies`, `/api/studies/<id>`) over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna

from pipeline.config import CODE_ROOT

# Straight to 127.0.0.1, whatever proxy the environment names.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def make_study(runs: Path, name: str, trials: int) -> str:
    """A finished study with `trials` trials in runs/tune/<name>/study.db; returns its URL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{runs / 'tune' / name / 'study.db'}"
    (runs / "tune" / name).mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.optimize(lambda t: 1 - abs(t.suggest_float("learning_rate", 1e-4, 1e-2, log=True) - 3e-3),
                   n_trials=trials)
    return url


def get_json(url: str) -> dict:
    with HTTP.open(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def listening(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                out.add(address)
    return out


def test_dashboard_serves_the_study_on_loopback_until_ctrl_c(tmp_path):
    runs = tmp_path / "runs"
    make_study(runs, "other", 1)  # shares nothing; the watched study must be found by name
    make_study(runs, "watch", 2)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "dashboard", "--study", "watch",
                             "--runs-dir", str(runs), "--port", "0"], cwd=CODE_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # Ctrl-C must reach it even when pytest runs as a background job
                            # (which starts with SIGINT ignored, and children inherit that).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the dashboard printed no address within 60 s"
        line = proc.stdout.readline()
        found = re.match(r"optuna-dashboard: (http://127\.0\.0\.1:(\d+))/dashboard/studies/(\d+) "
                         r"\(study 'watch' in sqlite:///.*study\.db; Ctrl-C to stop\)$", line)
        assert found, line
        base, port, study_id = found[1], int(found[2]), int(found[3])
        assert listening(port) == {"0100007F"}  # 127.0.0.1 only, no other interface

        studies = get_json(f"{base}/api/studies")["study_summaries"]
        assert {s["study_name"]: s["study_id"] for s in studies}["watch"] == study_id
        detail = get_json(f"{base}/api/studies/{study_id}")
        assert detail["name"] == "watch" and detail["directions"] == ["maximize"]
        assert [t["number"] for t in detail["trials"]] == [0, 1]
        assert all(t["state"] == "Complete" for t in detail["trials"])
        assert all([p["name"] for p in t["params"]] == ["learning_rate"] for t in detail["trials"])
        assert len(detail["best_trials"]) == 1
        with HTTP.open(f"{base}/dashboard/studies/{study_id}", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and out.strip() == "dashboard stopped", (out, err)
    assert "Traceback" not in err


def test_dashboard_refuses_a_missing_study_in_one_line(tmp_path, capsys):
    # In-process through the CLI's main(): the same parser and error handling, without the
    # start-up cost of three more processes.
    from pipeline.cli import main

    runs = tmp_path / "runs"
    url = make_study(runs, "watch", 1)
    for args, message in [
        (["--study", "nope"], f"error: --study 'nope': no {runs / 'tune' / 'nope' / 'study.db'} "),
        (["--study", "nope", "--storage", url], f"error: study 'nope' is not in {url} (it has 'watch')"),
        (["--study", "watch", "--storage", f"sqlite:///{tmp_path / 'none.db'}"],
         f"error: --storage sqlite:///{tmp_path / 'none.db'}: no such file"),
    ]:
        assert main(["dashboard", "--runs-dir", str(runs), *args]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "none.db").exists()  # a missing file is not created
