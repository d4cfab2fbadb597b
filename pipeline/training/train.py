"""k-fold cross-validated training: one model per fold, out-of-fold predictions, resumable.

For each fold: fit, predict its validation rows, save; then the refit members (`refit`), which
fit on every labelled row. Writes `runs/<run>/` (see pipeline.runfiles for every file):
config.json, env.json, folds.npy, oof_probs.npy, metrics.json, folds.csv, and per model
`fold_<i>/` or `member_<j>/` with model.keras, history.csv and metrics.json. A checkpoint after
every epoch (pipeline.training.checkpoint) lets an interrupted run continue where it stopped; finished
models are verified by checksum and skipped. The plan (pipeline.machine.plan) runs the loop in this
process or `workers` models at a time in child processes (pipeline.machine.pool).

    python -m pipeline train --profile cpu --run cpu
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, Paths
from pipeline.console import Log, duration
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import HOLDOUT, load_split
from pipeline.errors import Interrupted
from pipeline.files import (
    read_json,
    remove_stale_temps,
    run_lock,
    save_keras,
    save_npy,
    write_json,
    write_text,
)
from pipeline.machine.budget import Cutoff, Deadline, cutoff_at
from pipeline.machine.plan import Plan, choose, setup_tensorflow, this_machine
from pipeline.machine.pool import Job, run_jobs
from pipeline.prediction.evaluate import fold_scores
from pipeline.prediction.inference import average_probs
from pipeline.provenance import environment
from pipeline.runfiles import (
    ModelEntry,
    RunFiles,
    check_resumable,
    check_same_split,
    fold_checksums,
    fold_done,
    read_optional,
    run_split,
    started_precision,
)
from pipeline.training import checkpoint, runbudget
from pipeline.training.jobs import ModelJob, job_for
from pipeline.training.pseudo import check_teacher
from pipeline.training.runmetrics import format_table, summarize

# --- one fold -------------------------------------------------------------------------------

@dataclass
class Fitted:
    """A trained fold model with its history and out-of-fold predictions."""

    model: Any
    history: list[dict[str, Any]]
    probs: np.ndarray  # on job.val_idx, made as test predictions are (TTA included)
    seconds: float


def fit_fold(job: ModelJob, x: np.ndarray, y: np.ndarray, eta: checkpoint.Eta | None = None,
             callbacks: list | None = None, log: Log = print) -> Fitted:
    """Train one fold, continuing from its last checkpoint if there is one.

    The model trains in its training form (fused BatchNorm, `cfg.precision`, which must be
    resolved) and is checkpointed, returned and used for the out-of-fold predictions in its saved
    form (pipeline.modeling.model), so those predictions are made exactly as the test predictions are.
    """
    import keras

    from pipeline.modeling.model import (
        average_weights,
        build_model,
        build_state,
        copy_state,
        one_hot,
        training_form,
    )

    cfg, ff = job.cfg, job.model.files
    if job.checkpoint:
        ff.root.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(job.seed)
    x_fit, y_fit = job.fit_data(x, y)
    steps = math.ceil(len(x_fit) / cfg.batch_size)

    start = (checkpoint.resume(ff, job.model.label, steps, log) if job.checkpoint
             else checkpoint.Resumed())
    saved = start.model or build_model(cfg, steps_per_epoch=steps)
    model = training_form(saved, cfg, steps)
    if start.done:
        keras.utils.set_random_seed(job.seed + start.done)  # else epoch done+1 shuffles like epoch 1

    def saved_form(trained: keras.Model) -> keras.Model:
        copy_state(trained, saved)
        return saved

    history = start.history
    t_start = time.time()
    cbs = [checkpoint.epoch_logger(ff, history, t_start, start.elapsed, job.model.label_of,
                                   cfg.epochs, eta or checkpoint.Eta(cfg.epochs), log,
                                   save=job.checkpoint,
                                   saved_form=saved_form),
           *(checkpoint.tensorboard(ff) if job.checkpoint else [])]
    if cfg.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.early_stopping,
                                                 restore_best_weights=True))
    cbs.extend(callbacks or [])
    if start.done < cfg.epochs:
        build_state(model)  # new or resumed: else the first epoch traces its step twice
        model.fit(x_fit, one_hot(y_fit), batch_size=cfg.batch_size, epochs=cfg.epochs,
                  initial_epoch=start.done,
                  validation_data=((x[job.val_idx], one_hot(y[job.val_idx]))
                                   if len(job.val_idx) else None),
                  validation_batch_size=1024,  # inference needs no small batches
                  callbacks=cbs, verbose=0, shuffle=True)
    if cfg.ema:
        average_weights(model, x_fit, cfg.batch_size, seed=job.seed)
    saved = saved_form(model)
    # Out-of-fold predictions are made exactly as test predictions are (the saved model, TTA
    # included), so the CV accuracy estimates what the submission will score.
    probs = (average_probs([saved], x[job.val_idx], tta=cfg.tta,
                           source=f"{job.model.label}'s model")
             if len(job.val_idx) else np.zeros((0, 10), np.float32))
    return Fitted(saved, history, probs, start.elapsed + time.time() - t_start)


def save_fold(job: ModelJob, fitted: Fitted, y: np.ndarray) -> dict[str, Any]:
    """Write a trained fold's model, predictions and history, then its metrics with checksums
    (last: a fold counts as finished only once they exist); remove its checkpoint."""
    ff = job.model.files
    save_keras(fitted.model, ff.model)
    save_npy(ff.oof, fitted.probs)
    save_npy(ff.val_idx, job.val_idx.astype(np.int64))
    hist = pd.DataFrame(fitted.history)
    write_text(ff.history, hist.to_csv(index=False))
    best_epoch = int(hist["val_accuracy"].idxmax() + 1) if "val_accuracy" in hist else len(hist)
    scores = fold_scores(fitted.probs, y[job.val_idx]) if len(job.val_idx) else {}
    meta = {
        job.model.kind: job.model.number + 1,
        **scores, "best_epoch": best_epoch,
        "epochs_run": len(hist), "seconds": round(fitted.seconds, 2),
        "n_train": int(len(job.train_idx)), "n_val": int(len(job.val_idx)),
        "n_pseudo": int(len(job.extra[1])) if job.extra is not None else 0,
        # Which run is "the latest" is decided from this (pipeline.runfiles.trained_at).
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "sha256": fold_checksums(ff.root),
    }
    write_json(ff.metrics, meta)
    checkpoint.clear(ff)
    return meta


def train_fold(job: ModelJob, x: np.ndarray, y: np.ndarray, eta: checkpoint.Eta | None = None,
               log: Log = print, cutoff: Cutoff | None = None) -> dict[str, Any] | None:
    """Train and save one model of a run; its metrics, or None for a member that `cutoff`
    stopped (its checkpoint kept)."""
    late = ([runbudget.cut_when_late(cutoff, job.model.label_of, job.cfg.epochs, log)]
            if cutoff is not None and job.model.member else [])
    try:
        fitted = fit_fold(job, x, y, eta=eta, callbacks=late, log=log)
    except runbudget.MemberCut:
        return None
    return save_fold(job, fitted, y)


# --- the run --------------------------------------------------------------------------------

def train_run(cfg: Config, paths: Paths, run: str, log: Log = print,
              provenance: dict[str, Any] | None = None, max_folds: int | None = None,
              explicit: frozenset[str] = frozenset(),
              plan_only: bool = False) -> dict[str, Any] | None:
    """Train (or resume) the folds of `run`; its metrics, or None if `max_folds` left some out
    (or `plan_only`: the plan printed, nothing written). With `cfg.budget`, the recipe is fitted
    to it; the `explicit` config keys are kept as given."""
    rf = RunFiles(paths.run_dir(run))
    with run_lock(rf.root, log):
        remove_stale_temps(rf.root)  # left by a killed run; safe to sweep while we hold the lock
        # precision=auto on a resume: the precision the run started with (config.json keeps it),
        # so a resume on another host computes as the run began; a new run's is the plan's.
        if cfg.precision == "auto":
            cfg = replace(cfg, precision=started_precision(rf.root))
        # A started run keeps its budget (none included) unless one is given again.
        saved = read_optional(rf.config)
        if saved is not None and "budget" not in explicit:
            cfg = replace(cfg, budget=float(saved.get("budget") or 0.0))
        if not cfg.budget:
            check_resumable(rf.root, cfg)
        t0 = time.time()
        # 1. The data and its split, checked before anything is written.
        x, y, fold_of = load_split(paths, cfg)
        check_same_split(rf.root, fold_of)
        if cfg.pseudo_from:
            check_teacher(cfg, paths, run, fold_of)
        # With a budget, the recipe that fits it (measured on this machine; a started run keeps
        # its own): refused, naming the minimum, before anything is written.
        machine = this_machine()
        budgeted = None
        if cfg.budget:
            budgeted = runbudget.fit(cfg, rf, machine, x, y, fold_of, explicit,
                                     _rows(DataFiles.of(paths).test))
            cfg = budgeted.cfg
            check_resumable(rf.root, cfg)

        # 2. The models still to train (the folds, then the refit members), and the plan that
        # trains them, which resolves the precision: before anything is written, so a precision
        # the machine lacks leaves no run behind.
        models = rf.models(cfg)
        damaged: list[str] = []  # shown after the run's first line
        metas: list[dict[str, Any] | None] = [fold_done(m.files.root, damaged.append)
                                              for m in models]
        unfinished = [m for m in models if metas[m.index] is None]
        todo = unfinished[:max_folds]
        plan = choose(cfg, machine, len(todo), budgeted.plan.speeds if budgeted else None)
        cfg = replace(cfg, precision=plan.precision)
        held = int(np.sum(fold_of == HOLDOUT))
        members = (f", then {cfg.refit} member(s) × {cfg.epochs} epochs on all {len(y) - held}"
                   if cfg.refit else "")
        log(f"run '{run}': profile {cfg.profile}, model {cfg.model}, {cfg.folds} folds × "
            f"{cfg.model_epochs(member=False)} epochs on {len(y) - held} images"
            f"{f' ({held} more held out)' if held else ''}"
            f"{f' + images pseudo-labelled by run {cfg.pseudo_from!r}' if cfg.pseudo_from else ''}"
            f"{members}"
            f" → {rf.root}")
        if budgeted:
            log(budgeted.plan.line(budgeted.work))
        if plan_only:
            log(plan.line())
            return None
        write_json(rf.config, cfg.to_dict())
        save_npy(rf.folds, fold_of)
        for line in damaged:
            log(line)
        kept = [m for m in models if metas[m.index] is not None]
        if kept:
            members_kept = sum(m.member for m in kept)
            log(f"resuming: {len(kept) - members_kept} finished fold(s)"
                f"{f' and {members_kept} member(s)' if members_kept else ''} kept, "
                f"{len(unfinished)} to train")
        if len(todo) < len(unfinished):
            log(f"--max-folds {max_folds}: training {', '.join(m.label for m in todo)} only")

        # 3. Train them, as the machine allows: in this process, or several at a time in child
        # processes (one per core or GPU). env.json records this start beside the earlier ones,
        # with the seconds it has spent so far (the budget counts them on resume).
        env = read_optional(rf.env) or {}
        start = {"at": datetime.now(timezone.utc).isoformat(), "host": platform.node(),
                 "machine": machine.describe(), "plan": plan.to_dict(),
                 "budget": budgeted.plan.to_dict() if budgeted else None, "seconds": 0.0}
        env = {**environment(paths), "machine": machine.describe(), "plan": plan.to_dict(),
               **(provenance or {}), "starts": [*env.get("starts", []), start]}
        write_json(rf.env, env)

        def spent() -> None:
            start["seconds"] = round(time.time() - t0, 2)
            write_json(rf.env, env)

        deadline = Deadline(cfg.budget, budgeted.plan.spent, clock=time.time,
                            started=t0) if budgeted else None
        dropped: list[ModelEntry] = []

        def admit(model: ModelEntry) -> bool:
            """Whether `model` starts: every fold does; a member only while it fits the budget."""
            if dropped or (model.member and deadline is not None
                           and not runbudget.member_fits(budgeted, deadline, metas,
                                                         model.number + 1)):
                if not dropped:
                    log(f"budget: {duration(max(0.0, deadline.left()))} left, too little for "
                        f"{model.label_of} and the submission after it: it and the members after "
                        "it are dropped")
                dropped.append(model)
                return False
            return True

        def finished(model: ModelEntry, meta: dict[str, Any] | None) -> None:
            spent()
            if meta is None:  # a member the budget cut in flight: it said so
                dropped.append(model)
                return
            metas[model.index] = meta
            log(_done_line(model, meta))

        budget_end = deadline.left() + time.time() if deadline else 0.0
        cut = cutoff_at(budgeted.plan, budgeted.work, budget_end) if budgeted else None
        eta = partial(_eta, cfg, todo, budget_end=budget_end)
        parallel = plan.processes > 1 and len(todo) > 1
        if todo:
            log(plan.line())
        try:
            if parallel:
                _train_parallel(cfg, plan, paths, run, todo, eta, admit, finished, log, cut)
            else:
                setup_tensorflow(cfg, plan, plan.threads_for(0, 1, cfg.threads))
                _train_serial(cfg, paths, run, x, y, fold_of, todo, eta, admit, finished, log,
                              cut)
        except BaseException as exc:
            spent()
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
            ready = _stop_early(rf, cfg, y, fold_of, models, metas, time.time() - t0, why, log)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(_interrupted_where(todo, metas, parallel) + ready) from None
            raise
        spent()
        if any(metas[m.index] is None for m in models if not m.member) or (
                not dropped and any(m is None for m in metas)):
            left = [m.label for m in models if metas[m.index] is None]
            log(f"run '{run}' is partial: {', '.join(left)} still to train; "
                "run the command again without --max-folds to finish it")
            return None
        if dropped:
            _stop_early(rf, cfg, y, fold_of, models, metas, time.time() - t0, "budget", log)
            return read_json(rf.metrics)

        # 4. The run's out-of-fold predictions and metrics.
        rf.stopped.unlink(missing_ok=True)
        return _summary(rf, cfg, y, fold_of, models, metas, time.time() - t0, bool(todo), log)


def _summary(rf: RunFiles, cfg: Config, y: np.ndarray, fold_of: np.ndarray,
             models: list[ModelEntry], metas: list[dict[str, Any] | None], wall: float,
             retrained: bool, log: Log) -> dict[str, Any]:
    """Write the run's metrics from its finished folds and members, and print its table."""
    folds = [metas[m.index] for m in models if not m.member]
    members = [metas[m.index] for m in models if m.member and metas[m.index] is not None]
    metrics = summarize(rf, cfg, y, fold_of, folds, wall, members=members, retrained=retrained)
    log(format_table(metrics))
    return metrics


def _stop_early(rf: RunFiles, cfg: Config, y: np.ndarray, fold_of: np.ndarray,
                models: list[ModelEntry], metas: list[dict[str, Any] | None], wall: float,
                why: str, log: Log) -> str:
    """The anytime ensemble: once every fold has finished, a run stopped before its last member
    still gets its metrics and the state "stopped, N of M members", so its finished models make
    a submission. What the interrupted line adds about it ("" while folds are missing)."""
    if any(metas[m.index] is None for m in models if not m.member) or cfg.refit == 0:
        return ""
    done = sum(1 for m in models if m.member and metas[m.index] is not None)
    if done == cfg.refit:
        return ""
    _summary(rf, cfg, y, fold_of, models, metas, wall, True, log)
    write_json(rf.stopped, {"members": done, "planned": cfg.refit, "why": why,
                            "at": datetime.now(timezone.utc).isoformat()})
    ready = (f"{done} of its {cfg.refit} planned refit members" if done
             else "its fold models (no refit member finished)")
    log(f"run '{rf.name}' stopped ({why}) with {done} of {cfg.refit} members: its submission "
        f"averages {ready} (make submission); run the same command again to train the rest")
    return f"; the submission is ready from {ready}"


def _rows(csv: Path) -> int:
    """Data rows of a CSV (its lines but the header; 0 if it is missing), without parsing it."""
    if not csv.is_file():
        return 0
    with open(csv, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def _train_serial(cfg: Config, paths: Paths, run: str, x: np.ndarray, y: np.ndarray,
                  fold_of: np.ndarray, todo: list[ModelEntry], eta: Callable[..., checkpoint.Eta],
                  admit: Callable[[ModelEntry], bool],
                  finished: Callable[[ModelEntry, dict[str, Any] | None], None], log: Log,
                  cut: Cutoff | None) -> None:
    """Train the models in `todo` one after another in this process, while `admit` lets them."""
    for n, model in enumerate(todo):
        if not admit(model):
            return
        log(f"=== {model.label_of} ===")
        finished(model, train_fold(job_for(cfg, paths, run, x, fold_of, model, log), x, y,
                                   eta=eta(n, 1), log=log, cutoff=cut))


def _fold_worker(cfg: Config, plan: Plan, threads: int, paths: Paths, run: str,
                 model: ModelEntry, eta: checkpoint.Eta,
                 cut: Cutoff | None) -> dict[str, Any] | None:
    """A worker process: train one model of the run; its metrics (None: cut by the budget)."""
    setup_tensorflow(cfg, plan, threads)
    x, y, fold_of = run_split(DataFiles.of(paths), paths.run_dir(run))

    def log(message: str) -> None:
        print(message, flush=True)

    return train_fold(job_for(cfg, paths, run, x, fold_of, model, log), x, y, eta=eta, log=log,
                      cutoff=cut)


def _train_parallel(cfg: Config, plan: Plan, paths: Paths, run: str, todo: list[ModelEntry],
                    eta: Callable[..., checkpoint.Eta], admit: Callable[[ModelEntry], bool],
                    finished: Callable[[ModelEntry, dict[str, Any] | None], None], log: Log,
                    cut: Cutoff | None) -> None:
    """Train the models in `todo`, `plan.processes` at a time, each in a fresh process, while
    `admit` lets them start."""
    at_once = plan.processes
    threads = [plan.threads_for(n, len(todo), cfg.threads) for n in range(len(todo))]
    jobs = [Job(model.label, _fold_worker, (cfg, plan, threads[n], paths, run, model,
                                            eta(n, at_once), cut))
            for n, model in enumerate(todo)]

    def started(n: int, job: Job, pid: int) -> None:
        log(f"=== {todo[n].label_of} (process {pid}, {threads[n]} thread(s)) ===")

    run_jobs(jobs, at_once, on_start=started, on_done=lambda n, job, meta: finished(todo[n], meta),
             slot_env=plan.env_for_slot, admit=lambda n: admit(todo[n]))


def _eta(cfg: Config, todo: list[ModelEntry], n: int, at_once: int,
         budget_end: float) -> checkpoint.Eta:
    """The ETA of the n-th model of `todo`: its epochs, then, shared by the processes, those of
    the models that start after the ones training beside it."""
    after = todo[n + at_once:]
    return checkpoint.Eta(cfg.model_epochs(todo[n].member),
                          sum(cfg.model_epochs(m.member) for m in after) / at_once, budget_end)


def _done_line(model: ModelEntry, meta: dict[str, Any]) -> str:
    """The line that reports a finished fold or member."""
    score = f"val accuracy {meta['val_accuracy']:.4f}" if "val_accuracy" in meta else "trained"
    return f"{model.label}: {score} in {duration(meta['seconds'])}"


def _interrupted_where(todo: list[ModelEntry], metas: list[dict[str, Any] | None],
                       parallel: bool) -> str:
    """What an interrupted run kept, and how to continue it."""
    running = [m for m in todo if metas[m.index] is None]
    if parallel or not running:
        return ("interrupted; finished folds and the last epoch of each running fold are saved — "
                "run the same command again to resume")
    state = running[0].files.state
    after = f" after epoch {read_json(state)['epoch']}" if state.is_file() else ""
    return (f"interrupted in {running[0].label_of}{after}; finished folds and "
            "the last epoch are saved — run the same command again to resume")
