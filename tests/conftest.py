"""Shared fixtures: the embedded sample on disk, one `demo` run, and helpers that run the CLI.

`run_cli` starts `python -m pipeline` as a user would (a fresh process: signals, console output,
worker processes); `call_cli` runs the same `main` in the test process, which skips the seconds of
Python and TensorFlow start-up that each process pays and is what most tests need.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.cli import main
from pipeline.config import CODE_ROOT
from pipeline.data.sample import write_sample

# The files that take longest (`pytest --durations`), first: `--dist loadfile` hands whole files
# to the xdist workers in collection order, and a long file handed out last would leave one
# worker running it alone at the end.
HEAVY_FIRST = ("test_parallel.py", "test_reliability.py", "test_pipeline.py", "test_tune.py",
               "test_postgres.py", "test_benchmark.py", "test_holdout.py", "test_report.py",
               "test_kaggle_gpu.py", "test_kaggle.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the heaviest test files first (the order within each file is kept)."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sample (train/test/sample_submission/test_labels CSVs) in a temp folder."""
    return write_sample(tmp_path_factory.mktemp("sample"))


def run_cli(*args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 600, cwd: Path = CODE_ROOT) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` (from the repo root unless `cwd`) and return the finished
    process. The package comes from this checkout wherever it runs."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def call_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` run in this process; its exit code and what it printed.

    For commands whose output comes from this process alone (one fold at a time: worker
    processes print to the real stdout) and that need no signal or environment of their own.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    proc = subprocess.CompletedProcess(["pipeline", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"pipeline {' '.join(args)} exited {code}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> SimpleNamespace:
    """`demo` on the embedded sample, run once per test session in a real process (even with
    several xdist workers: the first one to need it trains it, the others wait for it).

    It runs as a user of an installed copy would: in an empty folder, with no path flag, so
    everything it writes lands in data/sample/, runs/ and submissions/ under that folder.
    Treat it as read-only: `tiny_run` hands out copies.
    """
    # The folder all xdist workers of this session share (each has its own basetemp below it).
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    root = shared / "demo-once"
    with open(shared / "demo-once.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "demo-once.done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            proc = run_cli("demo", cwd=root)
            (shared / "demo-once.stdout").write_text(proc.stdout)
            (shared / "demo-once.stderr").write_text(proc.stderr)
            (shared / "demo-once.done").write_text("")
    return SimpleNamespace(root=root, stdout=(shared / "demo-once.stdout").read_text(),
                           stderr=(shared / "demo-once.stderr").read_text())


# Where `demo` run in an empty folder puts its data, runs and submissions, and the names the
# copies give them.
DEMO_LAYOUT = {"data": "data/sample", "runs": "runs", "subs": "submissions"}


def copy_demo(demo_once: SimpleNamespace, base: Path) -> SimpleNamespace:
    """A private copy of the session's `demo` run under `base`: data, runs and submissions."""
    for name, where in DEMO_LAYOUT.items():
        shutil.copytree(demo_once.root / where, base / name, ignore=shutil.ignore_patterns("cache"))
    # Its console output as if it had run here (the paths it printed name the copy).
    here = {k: getattr(demo_once, k).replace(str(demo_once.root / DEMO_LAYOUT["subs"]), str(base / "subs"))
            .replace(str(demo_once.root / DEMO_LAYOUT["data"]), str(base / "data"))
            .replace(str(demo_once.root), str(base)) for k in ("stdout", "stderr")}
    t = SimpleNamespace(data=base / "data", runs=base / "runs", subs=base / "subs", **here)
    t.flags = ["--runs-dir", str(t.runs)]
    t.run_dir = t.runs / "demo"
    return t


@pytest.fixture(scope="session")
def tiny_run(demo_once: SimpleNamespace,
             tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`demo` on the embedded sample: run 'demo' trained, predicted and reported (a copy of the
    session's, shared by the tests of this worker that only read it or add runs beside it)."""
    return copy_demo(demo_once, tmp_path_factory.mktemp("report"))


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


# --- run folders and real signals (the reliability tests) -----------------------------------

FOLD_FILES = {"model.keras", "history.csv", "metrics.json", "oof.npy", "val_idx.npy"}


def run_files(run: Path) -> set[str]:
    """Every file under a run folder (hidden ones included), relative to it, but the report's
    figures and the TensorBoard event logs (named by time and pid, one per process that trained)."""
    return {rel for p in run.rglob("*") if p.is_file()
            if not (rel := p.relative_to(run).as_posix()).startswith("figures/")
            and "/tb/" not in rel and rel != "report.html"}


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interrupt(args: list[str], fold: int, sig: int, folds: int,
              meanwhile: Callable[[subprocess.Popen], None] | None = None,
              group: bool = False, kind: str = "fold") -> SimpleNamespace:
    """Run `python -m pipeline ARGS` (a run of `folds` folds); send `sig` once fold `fold`
    (1-based) has finished an epoch (`kind="member"`: member `fold` of `folds` members).

    `meanwhile(proc)`, if given, runs in a thread from fold 1 on and is done before the signal.
    `group` sends it to the whole process group, as a terminal's Ctrl-C does.
    """
    stderr = Path(args[args.index("--runs-dir") + 1]).parent / f"stderr-{fold}-{sig}.txt"
    stderr.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr, "w") as err:
        # As from a terminal: SIGINT at its default even if the test runner ignores it.
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=CODE_ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                start_new_session=group,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, proc.kill)  # never hang the suite
    watchdog.start()
    out, sent, side = [], False, None
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith((f"=== fold 1/{folds} ===", "resuming:")) and meanwhile is not None:
                side = threading.Thread(target=meanwhile, args=(proc,))
                side.start()
            if re.match(rf"  {kind} {fold}/{folds} epoch +\d+/", line) and not sent:
                if side is not None:
                    side.join()
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                sent = True
        proc.wait(timeout=120)
    finally:
        watchdog.cancel()
    assert sent, "".join(out)[-3000:] + stderr.read_text()[-3000:]
    return SimpleNamespace(pid=proc.pid, returncode=proc.returncode, stdout="".join(out),
                           stderr=stderr.read_text())
