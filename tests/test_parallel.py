"""Folds trained in parallel processes stop, resume and clean up like serial ones; runs are
reproducible (bit-identical with --deterministic, in turn or in parallel) and traceable (env.json).

Real processes and real signals on the embedded sample: a 3-fold run trained two folds at a
time is stopped with Ctrl-C (to the process group, as from a terminal) in fold 2, re-run and
killed (SIGKILL) in fold 3, then re-run to the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import CODE_ROOT
from pipeline.runfiles import fold_done
from tests.conftest import FOLD_FILES, interrupt, last_error_line, run_cli, run_files, sha256

FOLDS, EPOCHS = 3, 3  # folds 1-2 at once, then fold 3 alone
TRAIN = ["train", "--profile", "tiny", "--set", f"folds={FOLDS}", "--set", f"epochs={EPOCHS}"]
RUN_FILES = {"config.json", "env.json", "folds.npy", "oof_probs.npy", "metrics.json", "folds.csv"}
EXPECTED = RUN_FILES | {f"fold_{i}/{name}" for i in range(FOLDS) for name in FOLD_FILES}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel")


def _gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True


@pytest.fixture(scope="module")
def parallel(work: Path, sample_dir: Path) -> dict:
    """A 3-fold run trained two folds at a time (`workers=2`): Ctrl-C (to the process group, as
    from a terminal) in fold 2, the same command again killed (SIGKILL) in fold 3, and once
    more to the end."""
    args = [*TRAIN, "--set", "workers=2", "--run", "par", "--data", str(sample_dir),
            "--runs-dir", str(work / "runs")]
    run = work / "runs" / "par"
    sigint = interrupt(args, 2, signal.SIGINT, FOLDS, group=True)
    after_sigint = run_files(run)
    sigkill = interrupt(args, 3, signal.SIGKILL, FOLDS)
    children = [int(pid) for pid in re.findall(r"\(process (\d+), ", sigkill.stdout)]
    # What is claimed is that they exit, not how fast a loaded machine lets them: a generous bound.
    deadline = time.time() + 120
    while not all(_gone(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in children if not _gone(pid)]
    final = run_cli(*args, "--no-report")
    return {"run": run, "sigint": sigint, "after_sigint": after_sigint, "sigkill": sigkill,
            "children": children, "orphans": orphans, "final": final.stdout}


def test_parallel_folds_run_two_at_a_time_with_the_cores_split(parallel: dict) -> None:
    # The cores this process may use (its affinity mask, which the run inherits), not the
    # machine's: under `taskset` or a container's CPU limit they differ.
    out, threads = parallel["sigint"].stdout, max(1, len(os.sched_getaffinity(0)) // 2)
    for fold in (1, 2):
        assert re.search(rf"=== fold {fold}/{FOLDS} \(process \d+, {threads} thread\(s\)\) ===", out)
    assert f"=== fold 3/{FOLDS}" not in out  # only `workers` folds at once


def test_ctrl_c_stops_every_fold_process_and_the_rerun_resumes(parallel: dict) -> None:
    first = parallel["sigint"]
    assert first.returncode == 130 and "Traceback" not in first.stderr, first.stderr[-2000:]
    assert last_error_line(first) == ("interrupted; finished folds and the last epoch of each "
                                      "running fold are saved — run the same command again to "
                                      "resume")
    assert {"fold_1/last.keras", "fold_1/state.json"} <= parallel["after_sigint"]
    assert ".lock" not in parallel["after_sigint"]
    assert "  resuming fold 2 after epoch " in parallel["sigkill"].stdout


def test_killing_the_parent_takes_its_fold_processes_with_it(parallel: dict) -> None:
    assert parallel["sigkill"].returncode == -signal.SIGKILL
    assert len(parallel["children"]) >= 2 and parallel["orphans"] == []


def test_parallel_run_finishes_with_every_artifact_and_a_good_score(parallel: dict,
                                                                     sample_dir: Path) -> None:
    run = parallel["run"]
    assert "CV (out-of-fold) accuracy" in parallel["final"]
    assert run_files(run) == EXPECTED
    metrics = json.loads((run / "metrics.json").read_text())
    y = pd.read_csv(sample_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(np.load(run / "oof_probs.npy").argmax(1) == y))
    assert metrics["cv_accuracy"] > 0.85
    assert [m["epochs_run"] for m in metrics["folds"]] == [EPOCHS] * FOLDS
    for i in range(FOLDS):
        assert fold_done(run / f"fold_{i}", log=pytest.fail) is not None


# --- reproducibility ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def twin_demos(work: Path, sample_dir: Path) -> list[Path]:
    """`demo --deterministic` twice at the same time: folds in turn, and folds in parallel."""
    roots = [work / f"twin{i}" for i in (1, 2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline", "demo", "--deterministic", "--set", "epochs=1",
         "--set", "threads=1", "--set", f"workers={workers}",
         "--data", str(root / "data"), "--runs-dir", str(root / "runs"),
         "--submissions-dir", str(root / "subs")],
        cwd=CODE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for root, workers in zip(roots, (1, 2))]
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, out[-2000:] + err[-2000:]
    return roots


def test_deterministic_runs_are_bit_identical(twin_demos: list[Path]) -> None:
    # The second twin trained its two folds in parallel worker processes, the first in turn.
    a, b = (root / "runs" / "demo" for root in twin_demos)
    assert json.loads((b / "config.json").read_text())["workers"] == 2
    for name in ("folds.npy", "oof_probs.npy", "test_probs.npy", "fold_0/oof.npy", "fold_1/oof.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name
    assert (twin_demos[0] / "subs" / "demo.csv").read_bytes() == \
        (twin_demos[1] / "subs" / "demo.csv").read_bytes()
    assert json.loads((a / "config.json").read_text())["deterministic"] is True


def test_env_json_traces_versions_commit_data_and_config(twin_demos: list[Path]) -> None:
    import importlib.metadata as md
    import platform

    run, data = twin_demos[0] / "runs" / "demo", twin_demos[0] / "data"
    env = json.loads((run / "env.json").read_text())
    assert env["python"] == platform.python_version()
    assert env["numpy"] == np.__version__
    assert env["tensorflow"] == md.version("tensorflow") and env["keras"] == md.version("keras")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head) and env["git_commit"] == head
    assert env["data_sha256"] == {n: sha256(data / n) for n in ("train.csv", "test.csv")}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["seed"] == 42 and cfg["epochs"] == 1 and cfg["profile"] == "tiny"
