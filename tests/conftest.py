"""Shared fixtures: the embedded sample on disk, one `demo` run, and a helper that runs the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.config import PROJ_ROOT
from pipeline.sample import write_sample


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sample (train/test/sample_submission/test_labels CSVs) in a temp folder."""
    return write_sample(tmp_path_factory.mktemp("sample"))


def run_cli(*args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` from the repo root and return the finished process."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJ_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`demo` on the embedded sample: trains run 'demo', predicts, and builds its report.

    Trained once per session and shared (the report tests and the browser test read it).
    """
    base = tmp_path_factory.mktemp("report")
    t = SimpleNamespace(data=base / "data", runs=base / "runs", subs=base / "subs")
    t.flags = ["--runs-dir", str(t.runs)]
    t.stdout = run_cli("demo", "--data", str(t.data), "--submissions-dir", str(t.subs),
                       *t.flags).stdout
    t.run_dir = t.runs / "demo"
    return t


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The final stderr line (TensorFlow's C++ start-up lines may precede it)."""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
