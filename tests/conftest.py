"""Shared fixtures: the embedded sample on disk, one `demo` run, and a helper that runs the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.cli import main
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
    proc = run_cli("demo", "--data", str(t.data), "--submissions-dir", str(t.subs), *t.flags)
    t.stdout, t.stderr = proc.stdout, proc.stderr
    t.run_dir = t.runs / "demo"
    return t


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The final stderr line (TensorFlow's C++ start-up lines may precede it)."""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cli_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    """Exit code and non-empty stderr lines of `python -m pipeline ARGS`, run in-process."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def snapshot(root: Path) -> set[str]:
    """Every path under `root` except the parse cache (a well-formed CSV may be cached)."""
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if "cache" not in p.relative_to(root).parts}


BAD_CELLS = ["", "x", "-1", "256", "1.5", "nan", " ", "1e3", "0x10", '"', "NA", "inf", "3 4",
              "'7'", "1,2", "\udcff"]


def mutate_csv(text: str, rng: random.Random, for_test_csv: bool) -> str:
    """`text` (a Kaggle CSV) with one random defect of the kinds users' files have."""
    lines = text.rstrip("\n").split("\n")
    r = rng.randrange(1, len(lines))
    kinds = ["cell", "drop cell", "add cell", "rename header", "drop column", "blank line",
             "garbage line", "garbage file", "header again", "open quote", "semicolons"]
    if for_test_csv:
        kinds += ["truncate", "duplicate row", "delete row"]
    kind = rng.choice(kinds)
    cells = lines[r].split(",")
    if kind == "cell":
        cells[rng.randrange(len(cells))] = rng.choice(BAD_CELLS)
        lines[r] = ",".join(cells)
    elif kind == "drop cell":
        del cells[rng.randrange(len(cells))]
        lines[r] = ",".join(cells)
    elif kind == "add cell":
        cells.insert(rng.randrange(len(cells) + 1), str(rng.randrange(256)))
        lines[r] = ",".join(cells)
    elif kind == "rename header":
        head = lines[0].split(",")
        head[rng.randrange(len(head))] = rng.choice(["Pixel", "label ", "x", ""])
        lines[0] = ",".join(head)
    elif kind == "drop column":
        c = rng.randrange(len(lines[0].split(",")))
        lines = [",".join(v for i, v in enumerate(line.split(",")) if i != c) for line in lines]
    elif kind == "blank line":
        lines.insert(r, "")
    elif kind == "garbage line":
        lines.insert(r, "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(1, 60))))
    elif kind == "garbage file":
        return "".join(chr(rng.randrange(0, 0x2FF)) for _ in range(rng.randrange(1, 3000)))
    elif kind == "header again":
        lines.insert(r, lines[0])
    elif kind == "open quote":
        lines[r] = '"' + lines[r]
    elif kind == "semicolons":
        lines[r] = lines[r].replace(",", ";")
    elif kind == "truncate":  # anywhere before the last row: rows go missing or one is cut
        return "\n".join(lines)[: rng.randrange(1, len("\n".join(lines[:-1])))]
    elif kind == "duplicate row":
        lines.insert(r, lines[r])
    elif kind == "delete row":
        del lines[r]
    return "\n".join(lines) + "\n"
