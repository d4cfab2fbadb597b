"""Interrupted runs resume, damaged files are retrained, writes are atomic.

Real processes and real signals on the embedded sample: one 5-fold run is stopped with Ctrl-C
(SIGINT) in fold 3, re-run with the same command and killed (SIGKILL) in fold 4, then re-run
to the end; its files are then damaged in copies. A tmpfs makes a real full disk. Folds trained
in parallel processes, and reproducibility: tests/test_parallel.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import CODE_ROOT
from pipeline.errors import UserError
from pipeline.files import remove_stale_temps, run_lock, write_atomic, write_text
from pipeline.runfiles import fold_done
from tests.conftest import (
    FOLD_FILES,
    call_cli,
    cli_in_process,
    interrupt,
    last_error_line,
    mutate_csv,
    run_cli,
    run_files,
    sha256,
    snapshot,
)

FOLDS, EPOCHS = 5, 3
TRAIN = ["train", "--profile", "tiny", "--set", f"folds={FOLDS}", "--set", f"epochs={EPOCHS}"]
RUN_FILES = {"config.json", "env.json", "folds.npy", "oof_probs.npy", "metrics.json", "folds.csv"}
EXPECTED = RUN_FILES | {f"fold_{i}/{name}" for i in range(FOLDS) for name in FOLD_FILES}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def interrupted(work: Path, sample_dir: Path) -> dict:
    """One 5-fold run: Ctrl-C (SIGINT) in fold 3 while a second `train` tries the same run,
    the same command again, killed (SIGKILL, as by the OOM killer) in fold 4, and once more."""
    args = [*TRAIN, "--run", "int", "--data", str(sample_dir), "--runs-dir", str(work / "runs")]
    run = work / "runs" / "int"
    second: dict = {}

    def try_second_train(proc: subprocess.Popen) -> None:
        second["proc"] = run_cli(*args, check=False)
        second["owner"] = proc.pid

    sigint = interrupt(args, 3, signal.SIGINT, FOLDS, meanwhile=try_second_train)
    after_sigint = {"files": run_files(run), "sha": {p: sha256(run / p) for p in run_files(run)},
                    "state": json.loads((run / "fold_2" / "state.json").read_text())}
    sigkill = interrupt(args, 4, signal.SIGKILL, FOLDS)
    after_sigkill = {"files": run_files(run), "lock": (run / ".lock").read_text(),
                     "sha": {p: sha256(run / p) for p in run_files(run)},
                     "state": json.loads((run / "fold_3" / "state.json").read_text())}
    # What a kill in the middle of a checkpoint write leaves behind: a temp file of the dead pid.
    torn = run / "fold_3" / f".last.keras.pid{sigkill.pid}.x1y2z3.tmp.keras"
    torn.write_bytes(b"PK\x03\x04 half a zip")
    final = call_cli(*args, "--no-report")
    return {"args": args, "run": run, "second": second, "sigint": sigint, "after_sigint": after_sigint,
            "sigkill": sigkill, "after_sigkill": after_sigkill, "torn": torn, "final": final.stdout}


def test_ctrl_c_stops_with_where_and_how_to_resume(interrupted: dict) -> None:
    first = interrupted["sigint"]
    assert first.returncode == 130, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    epoch = interrupted["after_sigint"]["state"]["epoch"]
    assert last_error_line(first) == (f"interrupted in fold 3/5 after epoch {epoch}; finished folds "
                                      "and the last epoch are saved — run the same command again "
                                      "to resume")
    files = interrupted["after_sigint"]["files"]
    assert {"fold_0/metrics.json", "fold_1/metrics.json", "fold_2/last.keras", "fold_2/state.json",
            "fold_2/history.csv"} <= files
    assert ".lock" not in files and "fold_2/metrics.json" not in files


def test_second_train_on_an_active_run_is_refused(interrupted: dict) -> None:
    proc = interrupted["second"]["proc"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"error: {interrupted['run']}: another command (pid "
                                     f"{interrupted['second']['owner']}) is using this run; wait for "
                                     "it to finish or stop it first")


def test_rerun_after_ctrl_c_keeps_folds_1_2_and_continues_fold_3(interrupted: dict) -> None:
    out, run = interrupted["sigkill"].stdout, interrupted["run"]
    epoch = interrupted["after_sigint"]["state"]["epoch"]
    assert "resuming: 2 finished fold(s) kept, 3 to train" in out
    assert "=== fold 1/5 ===" not in out and "=== fold 2/5 ===" not in out
    assert f"  resuming fold 3 after epoch {epoch} (" in out
    # Fold 3 trains only the epochs it had left, and its history has each epoch exactly once.
    assert f"fold 3/5 epoch {epoch:>2}/{EPOCHS}" not in out and "fold 3: val accuracy" in out
    assert list(pd.read_csv(run / "fold_2" / "history.csv")["epoch"]) == list(range(1, EPOCHS + 1))
    before = interrupted["after_sigint"]["sha"]
    for name in ("fold_0/model.keras", "fold_1/model.keras", "fold_0/oof.npy", "fold_1/oof.npy"):
        assert sha256(run / name) == before[name], f"{name} was retrained"


def test_sigkill_resumes_from_the_checkpoint_and_takes_over_the_stale_lock(interrupted: dict) -> None:
    killed, out = interrupted["sigkill"], interrupted["final"]
    assert killed.returncode == -signal.SIGKILL
    assert interrupted["after_sigkill"]["lock"] == str(killed.pid)  # the dead owner's lock stays
    assert f"took over the lock left by pid {killed.pid}, which is no longer running" in out
    assert "resuming: 3 finished fold(s) kept, 2 to train" in out
    assert "=== fold 3/5 ===" not in out
    resumed = int(re.search(r"  resuming fold 4 after epoch (\d+) \(", out).group(1))
    assert interrupted["after_sigkill"]["state"]["epoch"] <= resumed <= EPOCHS
    assert not interrupted["torn"].exists()
    before = interrupted["after_sigkill"]["sha"]
    assert all(sha256(interrupted["run"] / f"fold_{i}" / "model.keras") == before[f"fold_{i}/model.keras"]
               for i in range(3))


def test_resumed_run_has_the_artifacts_of_an_uninterrupted_one(interrupted: dict,
                                                               sample_dir: Path) -> None:
    run = interrupted["run"]
    assert run_files(run) == EXPECTED  # no checkpoint, lock or temp file left over
    metrics = json.loads((run / "metrics.json").read_text())
    y = pd.read_csv(sample_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    oof = np.load(run / "oof_probs.npy")
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(oof.argmax(1) == y))
    # An uninterrupted tiny 5 × 3 run scores about 0.92; a lost or corrupted fold would not.
    assert metrics["cv_accuracy"] > 0.85
    assert min(m["val_accuracy"] for m in metrics["folds"]) > 0.8
    assert [m["epochs_run"] for m in metrics["folds"]] == [EPOCHS] * FOLDS
    for i in range(FOLDS):
        assert fold_done(run / f"fold_{i}", log=pytest.fail) is not None  # checksums hold


@pytest.fixture(scope="module")
def damaged_run(interrupted: dict, work: Path) -> dict:
    """A copy of the finished run with a truncated model, an edited history and a torn checkpoint."""
    runs = work / "damaged" / "runs"
    shutil.copytree(interrupted["run"].parent, runs)
    run = runs / "int"
    model = run / "fold_0" / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    hist = run / "fold_3" / "history.csv"
    hist.write_text(hist.read_text().replace("\n2,", "\n7,", 1))
    # Fold 5 as a kill during a checkpoint would leave it on a filesystem without atomic rename.
    fold5 = run / "fold_4"
    (fold5 / "metrics.json").unlink()
    (fold5 / "last.keras").write_bytes((fold5 / "model.keras").read_bytes()[:1000])
    write_text(fold5 / "state.json", '{"epoch": 2, "elapsed": 3.0}')
    kept = {i: sha256(run / f"fold_{i}" / "model.keras") for i in (1, 2)}
    args = [a if a != str(interrupted["run"].parent) else str(runs) for a in interrupted["args"]]
    return {"run": run, "out": call_cli(*args, "--no-report").stdout, "kept": kept}


def test_corrupt_fold_files_are_detected_and_retrained(damaged_run: dict) -> None:
    out, run = damaged_run["out"], damaged_run["run"]
    for fold in ("fold_0", "fold_3"):
        assert (f"{fold}: saved files are missing or corrupt (checksum mismatch); retraining this "
                "fold") in out
    assert re.search(r"  fold 5: checkpoint unreadable \(\w+.*\); restarting this fold", out)
    assert "resuming: 2 finished fold(s) kept, 3 to train" in out
    trained = re.findall(r"=== fold (\d)/5 ===", out)
    assert trained == ["1", "4", "5"]
    for i in (1, 2):
        assert sha256(run / f"fold_{i}" / "model.keras") == damaged_run["kept"][i]
    assert run_files(run) == EXPECTED
    assert all(fold_done(run / f"fold_{i}", log=pytest.fail) for i in range(FOLDS))


@pytest.mark.parametrize("victim", ["model.keras", "history.csv", "oof.npy", "val_idx.npy",
                                    "metrics.json"])
def test_fold_check_catches_every_damaged_file(interrupted: dict, tmp_path: Path, victim: str) -> None:
    fold = tmp_path / "fold_1"
    shutil.copytree(interrupted["run"] / "fold_1", fold)
    assert fold_done(fold, log=pytest.fail) is not None
    data = bytearray((fold / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte in the middle of the file
    (fold / victim).write_bytes(bytes(data))
    said: list[str] = []
    assert fold_done(fold, log=said.append) is None
    assert said == ["fold_1: saved files are missing or corrupt (checksum mismatch); retraining this fold"]


def test_predict_refuses_a_damaged_fold_model(interrupted: dict, sample_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(interrupted["run"].parent, runs, ignore=shutil.ignore_patterns("cache"))
    model = runs / "int" / "fold_3" / "model.keras"
    data = bytearray(model.read_bytes())
    data[-5000] ^= 0x01
    model.write_bytes(bytes(data))
    proc = call_cli("predict", "--run", "int", "--data", str(sample_dir), "--runs-dir", str(runs),
                    "--submissions-dir", str(tmp_path / "subs"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"error: {model}: does not match the checksum recorded when it "
                                     "was trained; run `python -m pipeline train --run int` to "
                                     "retrain it")
    assert not (tmp_path / "subs").exists()


# --- bad input aimed at a finished run ------------------------------------------------------

def test_fuzzed_test_csv_never_crashes_and_never_yields_a_submission(capsys, interrupted: dict,
                                                                     sample_dir: Path,
                                                                     work: Path) -> None:
    """60 random ways to break test.csv, each given to `predict` of a finished run."""
    data, subs, runs = work / "fuzz-data", work / "fuzz-subs", work / "fuzz-runs"
    shutil.copytree(sample_dir, data)
    shutil.copytree(interrupted["run"], runs / "int")
    test_csv, good = data / "test.csv", (data / "test.csv").read_text()
    args = ["predict", "--run", "int", "--data", str(data), "--runs-dir", str(runs),
            "--submissions-dir", str(subs)]
    before = snapshot(runs)
    rng = random.Random(7)
    for i in range(60):
        bad = mutate_csv(good, rng, for_test_csv=True)
        test_csv.write_bytes(bad.encode("utf-8", "surrogateescape"))
        code, err = cli_in_process(capsys, *args)
        assert code == 2 and len(err) == 1, (i, err, bad[:200])
        assert err[0].startswith((f"error: {test_csv}: ", f"error: {data / 'sample_submission.csv'}: ")), err
        assert snapshot(runs) == before and not subs.exists()
    # The untouched file does give a submission: the failures above were the input's fault.
    test_csv.write_text(good)
    assert cli_in_process(capsys, *args)[0] == 0 and (subs / "submission.csv").is_file()


def test_unsafe_model_file_is_refused(capsys, interrupted: dict, sample_dir: Path, tmp_path: Path) -> None:
    """A fold model holding a Python lambda, with a matching checksum, is never loaded."""
    import keras

    from pipeline.data.load import file_sha256
    from pipeline.files import read_json, write_json

    runs = tmp_path / "runs"
    shutil.copytree(interrupted["run"], runs / "int")
    inp = keras.Input((28, 28, 1), dtype="uint8")
    out = keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 0 + 1)(keras.ops.cast(inp, "float32"))))
    evil = runs / "int" / "fold_1" / "model.keras"
    keras.Model(inp, out).save(evil)
    meta = read_json(evil.parent / "metrics.json")
    meta["sha256"]["model.keras"] = file_sha256(evil)  # as if the whole fold had been swapped
    write_json(evil.parent / "metrics.json", meta)
    code, err = cli_in_process(capsys, "predict", "--run", "int", "--data", str(sample_dir), "--runs-dir",
                     str(runs), "--submissions-dir", str(tmp_path / "subs"))
    assert code == 2 and err == [f"error: {evil}: cannot load (it holds Python code, which Keras "
                                 "safe_mode refuses to run); run `python -m pipeline train --run "
                                 "int` to retrain it"]
    assert not (tmp_path / "subs").exists()


# --- locks and atomic writes ----------------------------------------------------------------

_HOLD = """
import sys, time
from pathlib import Path
from pipeline.errors import UserError
from pipeline.files import run_lock
run, signals, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(signals / f"ready-{me}").touch()
while not (signals / "go").exists():  # all try at once, however long each took to start
    time.sleep(0.01)
try:
    with run_lock(run):
        print("got", flush=True)
        while not (signals / "release").exists():  # held until every other one has tried
            time.sleep(0.01)
except UserError as exc:
    print("refused", exc, flush=True)
"""


def _touch_when(done: Callable[[], bool], path: Path, what: str) -> None:
    deadline = time.monotonic() + 300  # only against a hang: nothing here depends on speed
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    path.touch()


def test_run_lock_admits_exactly_one_of_racing_processes(tmp_path: Path) -> None:
    # Barriers, not clock times: the processes start the race together once all are ready, and
    # the winner holds the lock until every other one has answered.
    signals = tmp_path / "signals"
    signals.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run"), str(signals),
                               str(i)], cwd=CODE_ROOT, stdout=subprocess.PIPE, text=True)
             for i in range(6)]
    try:
        _touch_when(lambda: len(list(signals.glob("ready-*"))) == 6, signals / "go",
                    "the processes never all started")
        first = [p.stdout.readline() for p in procs]  # each one's answer: got or refused
        (signals / "release").touch()
        outs = [line + p.communicate(timeout=300)[0] for line, p in zip(first, procs)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sum(o.startswith("got") for o in outs) == 1, outs
    assert sum("another command (pid " in o for o in outs) == 5, outs
    assert not (tmp_path / "run").exists()  # nothing was written, so the folder is gone again


def test_stale_or_garbled_lock_file_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    for content in (dead, "", "not a pid"):
        (run / ".lock").write_text(content)
        said: list[str] = []
        with run_lock(run, log=said.append):
            assert (run / ".lock").read_text() == str(os.getpid())
        assert not (run / ".lock").exists()
        assert said == ([f"run: took over the lock left by pid {dead}, which is no longer running"]
                        if content == dead else [])


def test_write_atomic_on_a_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')

    def fill_disk(f) -> None:
        f.write(b'{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError) as err:
        write_atomic(target, fill_disk)
    assert str(err.value) == f"{target}: disk full while writing; free some space and run the command again"
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


def test_write_atomic_interrupted_midway_leaves_no_trace(tmp_path: Path) -> None:
    def interrupted(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "folds.csv", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_stale_temps_of_dead_writers_are_swept_live_ones_kept(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    (tmp_path / "fold_0").mkdir()
    stale = tmp_path / "fold_0" / f".oof.npy.pid{dead}.abc_12.tmp"
    live = tmp_path / f".metrics.json.pid{os.getpid()}.def34.tmp"
    other = tmp_path / ".notes.tmp"  # not ours: never touched
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_unwritable_runs_dir_is_one_clear_line(sample_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = call_cli(*TRAIN, "--data", str(sample_dir), "--runs-dir", str(blocker / "runs"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"error: {blocker / 'runs' / 'tiny' / '.lock'}: cannot write here "
                                     "(Not a directory); check the folder's permissions")
    assert blocker.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 3 MiB tmpfs: a real full disk. Needs root with mount rights; skipped otherwise."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_a_clear_error_and_the_run_resumes_after(tiny_tmpfs: Path, sample_dir: Path) -> None:
    # `deep`'s checkpoint sizes make the 3 MiB fill up after epoch 1 is saved, in epoch 2.
    args = ["train", "--profile", "tiny", "--set", "epochs=2", "--set", "model=deep", "--run", "full",
            "--data", str(sample_dir), "--runs-dir", str(tiny_tmpfs / "runs")]
    proc = call_cli(*args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.fullmatch(r"error: \S+: disk full while writing; free some space and run the "
                        r"command again", last_error_line(proc))
    run = tiny_tmpfs / "runs" / "full"
    leftovers = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in leftovers if ".tmp" in p.name or p.name == ".lock"]
    for p in leftovers:  # whatever was written is whole
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npy":
            np.load(p, allow_pickle=False)
        elif p.suffix == ".csv":
            pd.read_csv(p)
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_tmpfs)], check=True)
    assert "fold 1/2 epoch  1/2" in proc.stdout  # it filled up mid-training, not at start-up
    again = call_cli(*args, "--no-report")
    assert "  resuming fold 1 after epoch 1 (" in again.stdout
    assert "CV (out-of-fold) accuracy" in again.stdout
    assert {"fold_0/model.keras", "fold_1/model.keras", "oof_probs.npy"} <= run_files(run)
