"""Tests for `python -m pipeline tune`: a real (tiny) Optuna study on the embedded sample.

Every study pins a narrow `simple` CNN and trains 1–2 epochs on one fold so a trial takes
seconds. Killing a worker and running two of them need real processes; the other commands run
in-process (`call_cli`). The tests read the study back from its storage.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import call_cli

ROOT = Path(__file__).resolve().parents[1]
# A narrow, fast network: the search still covers learning rate, schedule, dropout, batch size…
PINS = ["--profile", "tiny", "--set", "model=simple", "--set", "filters=8",
        "--set", "dense_units=32", "--set", "augment=false"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.data.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data"))


def trials_of(storage: str, study: str) -> list:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_killed_study_resumes_to_the_target_and_train_uses_its_best_params(tmp_path, sample):
    runs = tmp_path / "runs"
    db = runs / "tune" / "s" / "study.db"
    tune = ["tune", "--data", str(sample), "--runs-dir", str(runs), "--study", "s",
            "--trials", "3", "--subsample", "0.5", "--min-epochs", "1", "--max-epochs", "2",
            "--pruner", "none", "--heartbeat", "1", *PINS]

    # Kill the worker (SIGKILL: no clean-up) while trial 1 is running.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *tune, "--no-plots"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if db.is_file():
                with sqlite3.connect(db, timeout=30) as con:
                    try:
                        rows = dict(con.execute("SELECT number, state FROM trials").fetchall())
                    except sqlite3.OperationalError:  # tables not created yet
                        rows = {}
                if rows.get(1) == "RUNNING":
                    break
            time.sleep(0.2)
        else:
            pytest.fail("trial 1 never started")
    finally:
        proc.kill()
        proc.wait()
    before = {t.number: t for t in trials_of(f"sqlite:///{db}", "s")}
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"
    # A second kind of dead trial: created, then its worker vanished before any heartbeat.
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").ask().number == 2

    # Same command again: both dead trials are failed (missing heartbeat, or no sign of life)
    # and re-run with the same parameters; finished trials are kept; 3 trials count in the end.
    out = call_cli(*tune).stdout
    assert "1 of 3 trials done" in out
    trials = {t.number: t for t in trials_of(f"sqlite:///{db}", "s")}
    assert trials[0].datetime_complete == before[0].datetime_complete
    assert trials[0].value == before[0].value and trials[0].user_attrs["baseline"] is True
    for dead in (1, 2):
        assert trials[dead].state.name == "FAIL" and "error" not in trials[dead].user_attrs
        retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead]
        assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
        assert all(retry[0].params[k] == v for k, v in trials[dead].params.items())
    assert sorted(trials) == [0, 1, 2, 3, 4]  # 3 counted + the 2 dead ones, nothing more
    assert all(trials[n].state.name == "COMPLETE" for n in (0, 3, 4))

    folder = runs / "tune" / "s"
    best = json.loads((folder / "best_params.json").read_text())
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    top = max(complete, key=lambda t: t.value)
    assert best["best_trial"] == top.number and math.isclose(best["value"], top.value)
    assert best["params"]["filters"] == 8 and best["params"]["model"] == "simple"
    assert best["params"]["learning_rate"] == top.params["learning_rate"]
    assert 1 <= best["params"]["epochs"] <= 2
    summary = (folder / "summary.txt").read_text()
    assert "complete 3 · pruned 0 · failed 0" in summary and "interrupted and re-run 2" in summary
    assert f"best: trial {top.number}" in summary and summary.strip() in out
    assert not (folder / "trials").exists()  # trials write no checkpoints: nothing is left behind
    for plot in ("tuning_history", "tuning_importances", "tuning_parallel", "tuning_slice"):
        assert (folder / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"

    # train --study: the best params become the run's config (a --set still wins).
    call_cli("train", "--data", str(sample), "--runs-dir", str(runs),
             "--profile", "tiny", "--study", "s", "--run", "tuned",
             "--set", "epochs=1", "--no-report")
    cfg = json.loads((runs / "tuned" / "config.json").read_text())
    assert cfg["study"] == "s" and cfg["epochs"] == 1
    for key, value in best["params"].items():
        if key != "epochs":
            assert cfg[key] == value, key
    env_json = json.loads((runs / "tuned" / "env.json").read_text())
    assert env_json["tuned_params"]["best_trial"] == best["best_trial"]


def test_pruner_stops_trials_that_cannot_learn(tmp_path, sample):
    runs = tmp_path / "runs"
    # After the baseline (lr 3e-3, learns), two learning rates far too small to learn anything
    # in 2 epochs: the median pruner must stop them.
    enqueue = tmp_path / "enqueue.json"
    enqueue.write_text(json.dumps([{"learning_rate": 1e-6}, {"learning_rate": 2e-6}]))
    out = call_cli("tune", "--data", str(sample), "--runs-dir", str(runs), "--study", "p",
                   "--trials", "3", "--subsample", "1", "--pruner", "median", "--startup-trials",
                   "1", "--enqueue", str(enqueue), "--no-plots", *PINS, "--set", "epochs=2",
                   "--set", "lr_schedule=constant", "--set", "batch_size=32").stdout
    trials = trials_of(f"sqlite:///{runs / 'tune' / 'p' / 'study.db'}", "p")
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "PRUNED"}, out
    assert trials[0].value > 0.5 and trials[0].intermediate_values[1] == pytest.approx(trials[0].value)
    for t in trials[1:]:
        assert t.params["learning_rate"] < 1e-5
        # One report per epoch on one increasing step counter; pruned at the last one.
        assert sorted(t.intermediate_values) == [0, 1] and t.user_attrs["pruned_at_epoch"] == 2
        assert max(t.intermediate_values.values()) < 0.3
    assert "complete 1 · pruned 2 · failed 0" in out


def test_two_workers_share_one_study(tmp_path, sample):
    runs = tmp_path / "runs"
    out = cli("tune", "--data", str(sample), "--runs-dir", str(runs), "--study", "w",
              "--trials", "3", "--workers", "2", "--subsample", "0.5", "--pruner", "none",
              "--no-plots", *PINS, "--set", "epochs=1").stdout
    folder = runs / "tune" / "w"
    trials = trials_of(f"sqlite:///{folder / 'study.db'}", "w")
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in trials), out
    logs = [(folder / f"worker-{i}.log").read_text() for i in (0, 1)]
    assert all("worker" in log and "Traceback" not in log for log in logs)
    assert json.loads((folder / "best_params.json").read_text())["trials"]["complete"] == 3


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, sample):
    # 0.1 % of ~630 rows cannot hold all ten digits: every trial raises while preparing data.
    runs = tmp_path / "runs"
    proc = call_cli("tune", "--data", str(sample), "--runs-dir", str(runs), "--study", "f",
                    "--trials", "2", "--subsample", "0.001", "--no-plots", *PINS, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith("error: study 'f': no trial has completed yet")
    trials = trials_of(f"sqlite:///{runs / 'tune' / 'f' / 'study.db'}", "f")
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["error"].startswith("ValueError") for t in trials)
    assert "complete 0 · pruned 0 · failed 2" in proc.stdout
    assert not (runs / "tune" / "f" / "best_params.json").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--study", "nope"], "--study 'nope': no "),
    (["tune", "--storage", "nonsense:/x"], "--storage nonsense:/x: cannot open"),
    (["tune", "--storage", "postgresql://me:secret@127.0.0.1:9/db", "--trials", "1"],
     "--storage postgresql://me:***@127.0.0.1:9/db"),
    (["tune", "--trials", "0"], "--trials 0: must be at least 1"),
    (["tune", "--study", "../up"], "--study '../up': use letters"),
])
def test_bad_input_is_one_clear_line(tmp_path, sample, args, message):
    proc = call_cli(*args, "--data", str(sample), "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert last_line(proc.stderr).startswith(f"error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr and "secret" not in proc.stderr


def test_pruning_callback_refuses_a_missing_metric_and_a_nan_loss():
    from pipeline.tuning.tune import pruning_callback

    trial = optuna.create_study(direction="maximize").ask()
    with pytest.raises(KeyError, match="val_acc"):
        pruning_callback(trial, "val_acc").on_epoch_end(0, {"loss": 0.5, "val_accuracy": 0.9})
    with pytest.raises(FloatingPointError):
        pruning_callback(trial).on_epoch_end(0, {"loss": float("nan"), "val_accuracy": 0.1})


def test_suggestions_the_baseline_and_the_enqueue_check_derive_from_the_search_space(
        tmp_path, monkeypatch):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from pipeline.config import Config
    from pipeline.errors import UserError
    from pipeline.tuning import space

    # Each drawn value comes from SPACE's distribution for it, with the study's epoch range; a
    # schedule's own parameter only with that schedule, augmentation magnitudes only with augment.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    schedules = set()
    for n in range(30):
        trial = study.ask()
        params = space.suggest(trial, {"augment": n % 2 == 0}, (2, 4))
        assert trial.distributions == {k: space.bounded((2, 4))[k] for k in trial.params}
        assert trial.distributions["epochs"].low == 2 and trial.distributions["epochs"].high == 4
        assert ("warmup_epochs" in params) == (params["lr_schedule"] == "onecycle")
        assert ("lr_decay" in params) == (params["lr_schedule"] == "exponential")
        assert ("rotation" in params) == params["augment"] == ("shift" in trial.params)
        schedules.add(params["lr_schedule"])
        study.tell(trial, 0.5)
    assert schedules == {"onecycle", "cosine", "exponential", "constant"}

    # Narrow the space: the suggestions, trial 0 and the check of --enqueue items all follow.
    monkeypatch.setitem(space.SPACE, "filters", CategoricalDistribution((24,)))
    monkeypatch.setitem(space.SPACE, "dropout", FloatDistribution(0.3, 0.4))
    params = space.suggest(optuna.create_study().ask(), {}, (2, 4))
    assert params["filters"] == 24 and 0.3 <= params["dropout"] <= 0.4
    base = space.baseline_params(Config(), {"model": "simple"}, (2, 4))  # filters 32, dropout 0.1
    assert "filters" not in base and "dropout" not in base and "model" not in base
    assert base["epochs"] == 4 and base["learning_rate"] == Config().learning_rate
    items = tmp_path / "enqueue.json"
    items.write_text(json.dumps([{"filters": 24}, {"filters": 32}]))
    with pytest.raises(UserError, match=r"item 2: filters=32 is not one of 24$"):
        space.read_enqueue(items, Config())
