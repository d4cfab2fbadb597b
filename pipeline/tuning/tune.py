"""Optuna hyperparameter search for the CNN: resumable, pruned, and shareable across machines.

Each trial trains the first fold(s) of the saved split (`pipeline.data.folds`, the same split `train`
uses) for a few epochs on a subsample of the training rows, reporting validation accuracy after
every epoch so a pruner can stop hopeless trials early. Trial 0 of a new study is the base
config (the profile's values), so the study always measures the default under the same budget.

The study lives in an Optuna storage: by default SQLite at `runs/tune/<study>/study.db`, which
survives restarts; `--trials` is the target total, so re-running the command resumes. `--workers W`
runs W local processes on one study; `--storage postgresql://…` lets workers on many machines
share it. A worker that dies stops sending heartbeats; its trial is marked failed and re-run with
the same parameters. Outputs in `runs/tune/<study>/` (written by pipeline.tuning.tune_report):
summary.txt, trials.csv, best_params.json (used by `train --study NAME`) and Optuna's plots.

    python -m pipeline tune --study s1 --trials 30 --timeout 1800
    python -m pipeline tune --study s1 --trials 30 --workers 2
    python -m pipeline train --study s1 --run tuned
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import config as config_mod
from pipeline.console import Log
from pipeline.errors import Interrupted, UserError
from pipeline.machine.plan import Plan, choose, this_machine
from pipeline.machine.pool import Job, run_jobs
from pipeline.tuning.space import baseline_params, suggest
from pipeline.tuning.storage import GRACE, Claim, claim_for, masked
from pipeline.tuning.study import EXECUTION_KEYS, Settings, load_study, make_sampler
from pipeline.tuning.tally import Tally
from pipeline.tuning.tune_report import Progress, write_results

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from pipeline.data.folds import Split


# --- settings -------------------------------------------------------------------------------

# --- one trial ------------------------------------------------------------------------------

class OutOfTime(Exception):
    """The study's --timeout passed during a trial: it stops, and is re-run on resume."""


def pruning_callback(trial: optuna.Trial, monitor: str = "val_accuracy", step_offset: int = 0,
                     deadline: float = math.inf):
    """A Keras callback reporting `monitor` after each epoch and raising TrialPruned when the
    pruner says so; a NaN loss fails the trial (FloatingPointError), and passing `deadline`
    (a time.time() value) stops it (OutOfTime)."""
    import keras
    import optuna

    class Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            if monitor not in logs:
                raise KeyError(f"pruning: metric {monitor!r} not in the epoch's logs "
                               f"({', '.join(sorted(logs)) or 'none'}); cannot prune on it")
            loss, value = float(logs.get("loss", 0.0)), float(logs[monitor])
            if not (math.isfinite(loss) and math.isfinite(value)):
                raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}")
            step = step_offset + epoch
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch + 1)
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} ({monitor} {value:.4f})")
            if time.time() > deadline:
                raise OutOfTime(f"--timeout reached after epoch {epoch + 1}")

    return Pruning()


def objective(trial: optuna.Trial, settings: Settings, data: Split, claim: Claim,
              deadline: float = math.inf) -> float:
    """Train the trial's config on the tuning fold(s); return the mean validation accuracy."""
    import keras
    import optuna

    from pipeline.data.folds import train_rows, val_rows
    from pipeline.prediction.evaluate import fold_scores
    from pipeline.runfiles import FoldFiles, ModelEntry
    from pipeline.training.jobs import ModelJob
    from pipeline.training.train import fit_fold

    claim.release()  # the trial exists now: other workers may start theirs
    budget, epochs = settings.budget, settings.budget.epochs(settings.pinned)
    t0 = time.time()
    # A first heartbeat before the mark that says heartbeats cover this trial: Optuna's heartbeat
    # thread records its first one concurrently with the objective, and a worker killed between
    # the mark and that record left a RUNNING trial no check would ever fail (a hang on resume).
    storage = trial.study._storage  # optuna.storages exports no heartbeat interface to test for
    if hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval():
        storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    try:
        # A base config without augmentation (profile simple) has no magnitudes to search.
        pinned = settings.pinned if settings.base.augment else {"augment": False, **settings.pinned}
        params = suggest(trial, pinned, epochs)
        trial.set_user_attr("hyperparameters", params)
        cfg = config_mod.from_dict({**settings.base.to_dict(), **params,
                                    "subsample": budget.subsample}, f"trial {trial.number}")
        accs: list[float] = []
        for k in range(budget.tune_folds):
            # A trial is re-run from its start if interrupted: no per-epoch checkpoint, no files.
            fold = ModelEntry(index=k, member=False, number=k, count=cfg.folds,
                              files=FoldFiles(settings.files.trial_fold(trial.number, k)))
            job = ModelJob(cfg, fold, train_rows(data.fold_of, k), val_rows(data.fold_of, k),
                           checkpoint=False)
            cb = pruning_callback(trial, "val_accuracy", step_offset=k * epochs[1],
                                  deadline=deadline)
            fitted = fit_fold(job, data.x, data.y, callbacks=[cb], log=lambda message: None)
            accs.append(fold_scores(fitted.probs, data.y[job.val_idx])["val_accuracy"])
            trial.set_user_attr("fold_accuracies", accs)
        value = float(np.mean(accs))
        if not math.isfinite(value):
            raise FloatingPointError(f"validation accuracy is {value}")
        return value
    except optuna.TrialPruned:
        raise
    except OutOfTime:
        trial.set_user_attr("stopped", "timeout")
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("stopped", "Ctrl-C")
        raise
    except Exception as exc:  # the parameters' fault: recorded as failed, the study goes on
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        keras.backend.clear_session()
        gc.collect()


# --- the worker loop ------------------------------------------------------------------------

def _quiet_optuna() -> None:
    import optuna

    # Our own line per trial replaces Optuna's log (which prints a traceback per failed trial).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range")


class _SilentTrials:
    """Fails RUNNING trials whose worker died inside Optuna's ask(), before the first heartbeat
    and before the objective started: Optuna's heartbeat check never sees those. Time is
    measured on this worker's own clock from when it first saw the trial, so clock differences
    between machines do not matter."""

    def __init__(self, heartbeat: int) -> None:
        self.limit = 2 * GRACE * heartbeat
        self.first_seen: dict[int, float] = {}

    def check(self, study: optuna.Study, running: list[FrozenTrial], log: Log) -> None:
        import optuna

        now = time.monotonic()
        for t in running:
            if "worker" in t.user_attrs:  # the objective started: heartbeats cover it
                continue
            if now - self.first_seen.setdefault(t.number, now) > self.limit:
                with contextlib.suppress(Exception):  # finished meanwhile, or failed by another
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    log(f"trial {t.number} never started training (its worker died); failed it")


def work(settings: Settings, deadline: float, on_trial: Callable[[optuna.Study], None] | None = None,
         log: Log = print, study: optuna.Study | None = None, data: Split | None = None) -> None:
    """Run trials until the study reaches its target (counting every worker's), or the deadline."""
    import optuna

    _quiet_optuna()
    from pipeline.data.folds import load_split

    data = data or load_split(settings.paths, settings.base)
    study = study or load_study(settings)
    claim = claim_for(settings.storage, settings.study, settings.files)
    silent = _SilentTrials(settings.budget.heartbeat)
    waited = False
    while time.time() < deadline:
        claim.acquire()
        try:
            optuna.storages.fail_stale_trials(study)
            silent.check(study, study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.RUNNING,)), log)
            trials = study.get_trials(deepcopy=False)
            tally = Tally.of(trials)
            waiting = [t for t in tally.counted if t.state == optuna.trial.TrialState.WAITING]
            running = [t for t in tally.counted if t.state == optuna.trial.TrialState.RUNNING]
            if tally.retry:
                # Not optuna's RetryHeartbeatStaleTrialCallback: it re-runs only trials failed for a
                # stale heartbeat (not those stopped by --timeout or Ctrl-C, nor _SilentTrials'), and
                # enqueues outside the claim, so the exact trial count and `retry_of` would not hold.
                dead = tally.retry[0]
                log(f"trial {dead.number} was interrupted; running it again with the same parameters")
                # Only a dead worker counts toward MAX_RETRIES, not a timeout or Ctrl-C.
                died = "stopped" not in dead.user_attrs
                study.enqueue_trial(dead.params, user_attrs={
                    "retry_of": dead.number, "retries": dead.user_attrs.get("retries", 0) + int(died),
                    **({"baseline": True} if dead.user_attrs.get("baseline") else {})})
            elif not waiting and len(tally.counted) >= settings.budget.trials:
                if not running:
                    return
                if not waited:
                    log(f"waiting for {len(running)} running trial(s) of other workers (a worker "
                        f"that died is detected after {GRACE * settings.budget.heartbeat} s)")
                    waited = True
                claim.release()
                time.sleep(min(settings.budget.heartbeat, 5))
                continue
            # Seed by trial number: resumed studies and parallel workers draw new points.
            study.sampler = make_sampler(settings.base.seed + len(trials), settings.budget.startup_trials)
            try:
                study.optimize(lambda t: objective(t, settings, data, claim, deadline),
                               n_trials=1, catch=(Exception,))
            except optuna.exceptions.UpdateFinishedTrialError as exc:
                # Another worker declared this trial dead (its heartbeats were late): its result
                # is dropped and the trial is re-run; this worker carries on.
                log(f"a trial was failed by another worker while running; continuing ({exc})")
        finally:
            claim.release()
        if on_trial is not None:
            on_trial(study)


def _tune_worker(settings: Settings, plan: Plan, index: int, deadline: float) -> None:
    """A local worker process (its output goes to worker-<index>.log): run trials until done."""
    from pipeline.machine.plan import setup_tensorflow

    setup_tensorflow(settings.base, plan, plan.threads)
    print(f"worker {index} (pid {os.getpid()}) on study '{settings.study}'", flush=True)
    work(settings, deadline, log=lambda m: print(m, flush=True))


# --- the command ----------------------------------------------------------------------------

def _setup_record(settings: Settings, data: Split) -> dict[str, Any]:
    """What a study's trials depend on; a resumed study must match it."""
    from pipeline.data.folds import labels_digest

    b = settings.budget
    pinned = {k: v for k, v in settings.pinned.items() if k not in EXECUTION_KEYS}
    return {"profile": settings.base.profile, "pinned": pinned,
            "folds": settings.base.folds, "seed": settings.base.seed, "tune_folds": b.tune_folds,
            "subsample": b.subsample, "epochs": list(b.epochs(settings.pinned)),
            "data": f"{len(data.y)} rows, labels sha1 {labels_digest(data.y)}",
            # Only when set, so studies started before the key existed still resume.
            **({"holdout": settings.base.holdout} if settings.base.holdout > 0 else {})}


def _prepare(settings: Settings, study: optuna.Study, data: Split, log: Log) -> None:
    """Check a resumed study's settings; give a new one the baseline and any enqueued trials."""
    setup = _setup_record(settings, data)
    # Machines starting a new study at once enqueue trial 0 once.
    with claim_for(settings.storage, settings.study, settings.files).held():
        saved = study.user_attrs.get("setup")
        if saved is None:
            study.set_user_attr("setup", setup)
        elif saved != setup:
            diff = [f"{k}: {saved.get(k)!r} → {setup[k]!r}" for k in setup
                    if saved.get(k) != setup[k]]
            raise UserError(f"study '{settings.study}' was started with other settings "
                            f"({'; '.join(diff[:3])}); use a new --study name, or the same settings")
        trials = study.get_trials(deepcopy=False)
        epochs = settings.budget.epochs(settings.pinned)
        if not trials:
            study.enqueue_trial(baseline_params(settings.base, settings.pinned, epochs),
                                user_attrs={"baseline": True})
        for params in settings.enqueue:
            if len(study.get_trials(deepcopy=False)) < settings.budget.trials:
                study.enqueue_trial(params, skip_if_exists=True)
    done = len(Tally.of(study.get_trials(deepcopy=False)).finished())
    log(f"study '{settings.study}' in {masked(settings.storage)}: {done} of "
        f"{settings.budget.trials} trials done; each trial trains {settings.budget.tune_folds} "
        f"fold(s) of {settings.base.folds} for {epochs[0]}–{epochs[1]} epochs on "
        f"{settings.budget.subsample:g} of the training rows")


def run_study(settings: Settings, log: Log = print, progress: bool = True,
              plots: bool = True) -> dict[str, Any]:
    """Run (or resume) a study to its target number of trials and write its results."""
    from pipeline.data.folds import load_split
    from pipeline.machine.plan import setup_tensorflow

    _quiet_optuna()
    if settings.workers < 0:
        raise UserError(f"--workers {settings.workers}: must be auto or at least 1")
    # The same planning as `train`: one worker process per core (per GPU), up to the trials.
    plan = choose(replace(settings.base, workers=settings.workers or settings.base.workers),
                  this_machine(), settings.budget.trials)
    # Trials train in the plan's precision (precision=auto: this machine's), as `train` would.
    settings = replace(settings, base=replace(settings.base, precision=plan.precision))
    settings.budget.check(settings.base.folds, settings.pinned)
    study = load_study(settings)  # a bad --storage fails here, before the data is read
    data = load_split(settings.paths, settings.base)
    _prepare(settings, study, data, log)
    deadline = time.time() + settings.budget.timeout
    bar = Progress(study, settings.budget.trials, enabled=progress)
    try:
        if plan.processes == 1:
            setup_tensorflow(settings.base, plan, plan.threads)
            work(settings, deadline, on_trial=bar.update, log=bar.bar.write, study=study,
                 data=data)
        else:
            _run_workers(settings, plan, study, deadline, bar, log)
    except KeyboardInterrupt:
        bar.close()
        write_results(settings, study, log, plots=False)  # what finished so far
        raise Interrupted("interrupted; finished trials are saved in the study — run the same "
                          "command again to resume") from None
    finally:
        bar.close()
    if len(Tally.of(study.get_trials(deepcopy=False)).finished()) < settings.budget.trials:
        log(f"--timeout {settings.budget.timeout:g} s reached before {settings.budget.trials} "
            "trials; run the same command again to continue")
    record = write_results(settings, study, log, plots=plots)
    if record is None:
        raise UserError(f"study '{settings.study}': no trial has completed yet (errors are in "
                        f"{settings.files.trials_csv}); raise --timeout or fix the errors")
    return record


def _run_workers(settings: Settings, plan: Plan, study: optuna.Study, deadline: float,
                 bar: Progress, log: Log) -> None:
    """Start local worker processes on the study and follow their trials until all exit."""
    jobs = [Job(f"tune worker {i}", _tune_worker, (settings, plan, i, deadline),
                log_path=str(settings.files.worker_log(i)))
            for i in range(plan.processes)]
    log(f"{plan.processes} worker processes ({plan.threads} TensorFlow thread(s) each"
        f"{', one GPU each' if plan.device == 'gpu' else ''}); "
        f"their logs: {settings.files.worker_log('<i>')}")
    settings.files.root.mkdir(parents=True, exist_ok=True)
    try:
        run_jobs(jobs, plan.processes, on_tick=lambda: bar.update(study), poll=1.0,
                 slot_env=plan.env_for_slot)
    finally:
        bar.update(study)
