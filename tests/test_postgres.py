"""Tuning across machines on a real PostgreSQL server, all through `python -m pipeline tune`.

Each "machine" is a CLI process with its own `--runs-dir` (its own files, folds and lock
folder) sharing one study through `--storage postgresql://…`, as README's "Many machines" says.
The tests need a server: `bash .ci/run` starts one and sets PIPELINE_TEST_PG_URL; by hand,

    PIPELINE_TEST_PG_URL=postgresql://user:pw@127.0.0.1/db python -m pytest -q -rs tests/test_postgres.py

Without the variable they are skipped (the reason shows with -rs); under CI=true they fail.
Every study is named uniquely and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from pipeline.config import CODE_ROOT
from pipeline.tuning.storage import masked
from tests.test_tune import PINS

PG_ENV = "PIPELINE_TEST_PG_URL"
# Fast trials: test_tune's narrow network on half of the sample's first fold, no pruning.
BUDGET = ["--subsample", "0.5", "--pruner", "none", "--no-plots", *PINS]


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The server's URL; skip without one, but fail under CI, which must have started it."""
    url = os.environ.get(PG_ENV, "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {PG_ENV} is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql://user:pw@127.0.0.1/db "
                    "(bash .ci/run does) to run these tests")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # fail clearly when the variable names no usable server
        optuna.storages.RDBStorage(url)
    except Exception as exc:
        pytest.fail(f"{PG_ENV} is set but the server cannot be used: {exc}")
    return url


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.data.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("data"))


@dataclass
class Machine:
    """One `tune` process with its own runs folder, its output going to files."""

    runs: Path
    proc: subprocess.Popen

    def wait(self, timeout: float = 240) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once it has finished."""
        code = self.proc.wait(timeout=timeout)
        return code, (self.runs / "stdout").read_text(), (self.runs / "stderr").read_text()


def start(runs: Path, *args: str) -> Machine:
    """Start `python -m pipeline tune --runs-dir RUNS ARGS` in the background."""
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / "stdout", "w") as out, open(runs / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "--runs-dir", str(runs),
                                 *args], cwd=CODE_ROOT, stdout=out, stderr=err,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return Machine(runs, proc)


@pytest.fixture
def new_study(pg_url: str) -> Iterator[str]:
    """A study name nobody has used; the study is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=pg_url)
    except KeyError:  # never created
        pass


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


# --- two machines, one study ----------------------------------------------------------------

# Odd, so the last trial is one slot for two machines: where a per-machine lock lets both start one.
TARGET = 3


@dataclass
class Shared:
    """The result of two machines tuning one study to TARGET trials."""

    url: str
    study: str
    machines: list[Machine]


@pytest.fixture(scope="module")
def two_machines(pg_url: str, sample: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Shared]:
    study = f"test-{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("machines")
    args = ["--data", str(sample), "--storage", pg_url, "--study", study,
            "--trials", str(TARGET), *BUDGET, "--set", "epochs=1"]
    machines = [start(root / name, *args) for name in ("a", "b")]
    try:
        for m in machines:
            code, out, err = m.wait()
            assert code == 0, f"{m.runs.name} exited {code}:\n{out[-2000:]}\n{err[-2000:]}"
        yield Shared(pg_url, study, machines)
    finally:
        for m in machines:
            m.proc.kill()
            m.proc.wait()
        optuna.delete_study(study_name=study, storage=pg_url)


def test_two_machines_reach_exactly_the_target(two_machines: Shared):
    trials = trials_of(two_machines.url, two_machines.study)
    # Exactly TARGET trials, numbered 0…TARGET-1 (distinct), all complete: never one more, as
    # the advisory lock makes counting and creating a trial atomic across machines.
    assert [t.number for t in trials] == list(range(TARGET))
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Each trial was run by one of the two. How many each ran depends on how fast each started
    # (on a busy machine one may find the target taken), so it is not asserted.
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert workers <= {str(m.proc.pid) for m in two_machines.machines}
    for m in two_machines.machines:
        log = (m.runs / "stdout").read_text()
        assert f"complete {TARGET} · pruned 0 · failed 0" in log


def test_both_machines_report_the_same_best_params(two_machines: Shared):
    records = [json.loads((m.runs / "tune" / two_machines.study / "best_params.json").read_text())
               for m in two_machines.machines]
    best = optuna.load_study(study_name=two_machines.study, storage=two_machines.url).best_trial
    for r in records:
        assert r["best_trial"] == best.number and r["value"] == pytest.approx(best.value)
        assert r["trials"]["complete"] == TARGET
        assert r["storage"] == masked(two_machines.url)  # the password is never saved
    assert records[0]["params"] == records[1]["params"]
    assert records[0]["params"]["filters"] == 8  # pinned keys are part of the result


def test_a_machine_with_other_settings_is_refused(two_machines: Shared, sample: Path,
                                                  tmp_path: Path):
    before = trials_of(two_machines.url, two_machines.study)
    third = start(tmp_path / "c", "--data", str(sample), "--storage", two_machines.url,
                  "--study", two_machines.study, "--trials", str(TARGET + 1), *BUDGET,
                  "--set", "epochs=1", "--set", "filters=16")
    code, out, err = third.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: study '{two_machines.study}' was started with other "
                               "settings (pinned: ")
    assert "filters" in lines[0] and "use a new --study name" in lines[0]
    password = sqlalchemy.engine.make_url(two_machines.url).password
    assert "Traceback" not in err and (not password or password not in err)
    assert len(trials_of(two_machines.url, two_machines.study)) == len(before)  # untouched


# --- a machine dies -------------------------------------------------------------------------

def test_a_killed_machines_trial_is_failed_by_heartbeat_and_rerun_by_the_other(
        pg_url: str, sample: Path, tmp_path: Path, new_study: str):
    # A one-trial study. Two epochs, so "mid-trial" is after the first epoch's report.
    args = ["--data", str(sample), "--storage", pg_url, "--study", new_study, "--trials", "1",
            "--heartbeat", "1", *BUDGET, "--set", "epochs=2"]
    a, b = start(tmp_path / "a", *args), None
    try:
        storage, deadline, victim = optuna.storages.RDBStorage(pg_url), time.time() + 120, None
        while victim is None and time.time() < deadline and a.proc.poll() is None:
            time.sleep(0.2)
            with contextlib.suppress(KeyError):  # the study is not created yet
                running = optuna.load_study(study_name=new_study, storage=storage).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                victim = next((t for t in running if t.intermediate_values), None)
        assert victim is not None, "machine a never got half-way through a trial"
        # Machine b joins, then a dies: b finds the target taken by a's running trial and
        # fails it once its heartbeats have stopped.
        b = start(tmp_path / "b", *args)
        a.proc.send_signal(signal.SIGKILL)
        code, out, err = b.wait()
        assert code == 0, f"{out[-2000:]}\n{err[-2000:]}"
    finally:
        for m in (a, b):
            if m is not None:
                m.proc.kill()
                m.proc.wait()

    trials = trials_of(pg_url, new_study)
    assert [t.number for t in trials] == [0, 1]
    dead, retry = trials
    assert dead.user_attrs["worker"].endswith(f":{a.proc.pid}") and dead.intermediate_values
    # Failed by b's heartbeat check, not by an error of its own: a trial that started its
    # objective (worker set, epochs reported) ends FAIL with neither `error` nor `stopped` (a
    # timeout or Ctrl-C) only that way. Not checked by clock times: on a busy machine a's last
    # heartbeats may come late, and b then rightly fails it sooner after the kill.
    assert dead.state.name == "FAIL" and not {"error", "stopped"} & set(dead.user_attrs)
    # Re-run by machine b with the same parameters; the re-run is what counts.
    assert retry.user_attrs["retry_of"] == 0 and retry.state.name == "COMPLETE"
    assert retry.params == dead.params and retry.user_attrs["worker"].endswith(f":{b.proc.pid}")
    assert "trial 0 was interrupted; running it again with the same parameters" in out
    assert "complete 1 · pruned 0 · failed 0" in out and "interrupted and re-run 1" in out
