"""k-fold cross-validated training: one model per fold, out-of-fold predictions, resumable.

Writes `runs/<run>/` (see pipeline.runfiles for every file): config.json, env.json, folds.npy,
oof_probs.npy, metrics.json, folds.csv, and per fold `fold_<i>/` with model.keras, history.csv
and metrics.json. A checkpoint after every epoch (pipeline.checkpoint) lets an interrupted run
continue where it stopped; finished folds are verified by checksum and skipped. Folds train
`workers` at a time in child processes (pipeline.pool); with `pseudo_from` each fold also trains
on images its teacher fold labelled (pipeline.pseudo).

    python -m pipeline train --profile cpu --run cpu
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import checkpoint
from pipeline.config import PROJ_ROOT, Config, Paths
from pipeline.console import duration, table
from pipeline.data import file_sha256, load_train
from pipeline.errors import Interrupted
from pipeline.files import (load_npy, read_json, remove_stale_temps, run_lock, save_keras, save_npy,
                            write_json, write_text)
from pipeline.folds import HOLDOUT, check_labels, load_folds, train_rows, val_rows
from pipeline.plan import Plan, apply, choose, precision_for, this_machine
from pipeline.pool import Job, run_jobs
from pipeline.predict import average_probs
from pipeline.pseudo import check_teacher, pseudo_labels
from pipeline.runfiles import (FoldFiles, RunFiles, check_resumable, check_same_split,
                               fold_checksums, fold_done, started_precision)

Log = Callable[[str], None]
Eta = Callable[[float, int], float]  # (seconds per epoch, epochs done) → seconds left in the run


# --- one fold -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoldJob:
    """One fold to train: its config, its rows of train.csv, and its folder."""

    cfg: Config
    fold: int  # 0-based
    train_idx: np.ndarray
    val_idx: np.ndarray
    folder: Path
    extra: tuple[np.ndarray, np.ndarray] | None = None  # pseudo-labelled images and labels
    checkpoint: bool = True  # save after every epoch so a killed fold resumes (tuning: off)

    @property
    def label(self) -> str:
        """How the console names this fold."""
        return f"fold {self.fold + 1}"


@dataclass
class Fitted:
    """A trained fold model with its history and out-of-fold predictions."""

    model: Any
    history: list[dict[str, Any]]
    probs: np.ndarray  # on job.val_idx, made as test predictions are (TTA included)
    seconds: float


def fit_fold(job: FoldJob, x: np.ndarray, y: np.ndarray, eta: Eta = lambda s, d: 0.0,
             callbacks: list | None = None, log: Log = print) -> Fitted:
    """Train one fold, continuing from its last checkpoint if there is one.

    The model trains in its training form (fused BatchNorm, `cfg.precision`, which must be
    resolved) and is checkpointed, returned and used for the out-of-fold predictions in its saved
    form (pipeline.model), so those predictions are made exactly as the test predictions are.
    """
    import keras

    from pipeline.model import (build_model, build_state, copy_state, one_hot, refresh_batchnorm,
                                training_form)

    cfg, ff = job.cfg, FoldFiles(job.folder)
    if job.checkpoint:
        ff.root.mkdir(parents=True, exist_ok=True)
    base_seed = cfg.seed + 1000 * job.fold + 100_003 * cfg.model_seed
    keras.utils.set_random_seed(base_seed)
    train_idx = _subsample(job.train_idx, y, cfg.subsample, cfg.seed + job.fold)
    x_fit, y_fit = x[train_idx], y[train_idx]
    if job.extra is not None:
        x_fit = np.concatenate([x_fit, job.extra[0]])
        y_fit = np.concatenate([y_fit, job.extra[1].astype(y.dtype)])
    steps = math.ceil(len(x_fit) / cfg.batch_size)

    start = (checkpoint.resume(ff, job.label, steps, log) if job.checkpoint
             else checkpoint.Resumed())
    saved = start.model or build_model(cfg, steps_per_epoch=steps)
    model = training_form(saved, cfg, steps)
    if start.done:
        keras.utils.set_random_seed(base_seed + start.done)  # else epoch done+1 shuffles like epoch 1

    def saved_form(trained: keras.Model) -> keras.Model:
        copy_state(trained, saved)
        return saved

    history = start.history
    t_start = time.time()
    cbs = [checkpoint.epoch_logger(ff, history, t_start, start.elapsed,
                                   f"{job.label}/{cfg.folds}", cfg.epochs, eta, log,
                                   save=job.checkpoint, saved_form=saved_form),
           *(_tensorboard(ff) if job.checkpoint else [])]
    if cfg.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.early_stopping,
                                                 restore_best_weights=True))
    cbs.extend(callbacks or [])
    if start.done < cfg.epochs:
        build_state(model)  # new or resumed: else the first epoch traces its step twice
        model.fit(x_fit, one_hot(y_fit), batch_size=cfg.batch_size, epochs=cfg.epochs,
                  initial_epoch=start.done,
                  validation_data=(x[job.val_idx], one_hot(y[job.val_idx])),
                  validation_batch_size=1024,  # inference needs no small batches
                  callbacks=cbs, verbose=0, shuffle=True)
    if cfg.ema:
        # fit() swaps the averages in when it ends; a fold resumed after its last epoch did not fit.
        model.optimizer.finalize_variable_values(model.trainable_weights)
        refresh_batchnorm(model, x_fit, cfg.batch_size, seed=base_seed)
    saved = saved_form(model)
    # Out-of-fold predictions are made exactly as test predictions are (the saved model, TTA
    # included), so the CV accuracy estimates what the submission will score.
    probs = average_probs([saved], x[job.val_idx], tta=cfg.tta,
                          source=f"{job.label}'s model")
    return Fitted(saved, history, probs, start.elapsed + time.time() - t_start)


def fold_scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation accuracy and log loss of a fold's predictions."""
    from sklearn.metrics import log_loss

    return {"val_accuracy": float(np.mean(probs.argmax(1) == y)),
            "val_loss": float(log_loss(y, probs, labels=list(range(10))))}


def save_fold(job: FoldJob, fitted: Fitted, y: np.ndarray) -> dict[str, Any]:
    """Write a trained fold's model, predictions and history, then its metrics with checksums
    (last: a fold counts as finished only once they exist); remove its checkpoint."""
    ff = FoldFiles(job.folder)
    save_keras(fitted.model, ff.model)
    save_npy(ff.oof, fitted.probs)
    save_npy(ff.val_idx, job.val_idx.astype(np.int64))
    hist = pd.DataFrame(fitted.history)
    write_text(ff.history, hist.to_csv(index=False))
    best_epoch = int(hist["val_accuracy"].idxmax() + 1) if "val_accuracy" in hist else len(hist)
    meta = {
        "fold": job.fold + 1, **fold_scores(fitted.probs, y[job.val_idx]), "best_epoch": best_epoch,
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


def train_fold(job: FoldJob, x: np.ndarray, y: np.ndarray, eta: Eta = lambda s, d: 0.0,
               log: Log = print) -> dict[str, Any]:
    """Train and save one fold of a run; its metrics."""
    return save_fold(job, fit_fold(job, x, y, eta=eta, log=log), y)


def _subsample(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified fraction of training rows; validation rows are never subsampled."""
    if fraction >= 1:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(keep)


def _tensorboard(ff: FoldFiles) -> list:
    """Per-epoch TensorBoard scalars in `fold_<i>/tb/` for `make tensorboard`; none without the package."""
    import importlib.util

    import keras

    # Keras' callback writes through tf.summary, which needs the tensorboard package.
    if importlib.util.find_spec("tensorboard") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(ff.tensorboard), histogram_freq=0,
                                        write_graph=False, update_freq="epoch", profile_batch=0)]


# --- the run --------------------------------------------------------------------------------

def train_run(cfg: Config, paths: Paths, run: str, log: Log = print,
              provenance: dict[str, Any] | None = None,
              max_folds: int | None = None) -> dict[str, Any] | None:
    """Train (or resume) the folds of `run`; its metrics, or None if `max_folds` left some out."""
    rf = RunFiles(paths.run_dir(run))
    with run_lock(rf.root, log):
        remove_stale_temps(rf.root)  # left by a killed run; safe to sweep while we hold the lock
        machine = this_machine()
        # precision=auto: the precision the run started with (config.json keeps it), else the
        # machine's; saved resolved, so a resume on another host computes as the run began.
        cfg = replace(cfg, precision=precision_for(
            started_precision(rf.root) if cfg.precision == "auto" else cfg.precision, machine))
        check_resumable(rf.root, cfg)
        t0 = time.time()
        # 1. The data and its split, checked before anything is written.
        train_csv = paths.data / "train.csv"
        x, y = load_train(train_csv, cache_dir=paths.runs / "cache")
        check_labels(y, cfg.folds, cfg.holdout, str(train_csv))
        fold_of = load_folds(paths.runs, y, cfg.folds, cfg.seed, cfg.holdout)
        check_same_split(rf.root, fold_of)
        if cfg.pseudo_from:
            check_teacher(cfg, paths, run, fold_of)
        write_json(rf.config, cfg.to_dict())
        save_npy(rf.folds, fold_of)
        held = int(np.sum(fold_of == HOLDOUT))
        log(f"run '{run}': profile {cfg.profile}, model {cfg.model}, {cfg.folds} folds × "
            f"{cfg.epochs} epochs on {len(y) - held} images"
            f"{f' ({held} more held out)' if held else ''}"
            f"{f' + images pseudo-labelled by run {cfg.pseudo_from!r}' if cfg.pseudo_from else ''}"
            f" → {rf.root}")

        # 2. The folds still to train.
        metas: list[dict[str, Any] | None] = [fold_done(rf.fold(i).root, log)
                                              for i in range(cfg.folds)]
        todo = [i for i, m in enumerate(metas) if m is None]
        if cfg.folds - len(todo):
            log(f"resuming: {cfg.folds - len(todo)} finished fold(s) kept, {len(todo)} to train")
        if max_folds is not None and len(todo) > max_folds:
            todo = todo[:max_folds]
            log(f"--max-folds {max_folds}: training fold(s) {', '.join(str(i + 1) for i in todo)} only")

        # 3. Train them, as the machine allows: in this process, or several at a time in child
        # processes (one per core or GPU).
        plan = choose(cfg, machine, len(todo))
        write_json(rf.env, {**environment(paths), "machine": machine.describe(),
                            "plan": plan.to_dict(), **(provenance or {})})
        parallel = plan.processes > 1 and len(todo) > 1
        if todo:
            log(plan.line())
        try:
            if parallel:
                _train_parallel(cfg, plan, paths, run, todo, metas, log)
            else:
                setup_tensorflow(cfg, plan, plan.threads_for(0, 1, cfg.threads))
                _train_serial(cfg, paths, run, x, y, fold_of, todo, metas, log)
        except KeyboardInterrupt:
            raise Interrupted(_interrupted_where(rf, cfg, todo, metas, parallel)) from None
        if any(m is None for m in metas):
            left = [str(i + 1) for i, m in enumerate(metas) if m is None]
            log(f"run '{run}' is partial: fold(s) {', '.join(left)} still to train; "
                "run the command again without --max-folds to finish it")
            return None

        # 4. The run's out-of-fold predictions and metrics.
        metrics = summarize(rf, cfg, y, fold_of, [m for m in metas if m is not None],
                            time.time() - t0)
        log(format_table(metrics))
        return metrics


def _job(cfg: Config, paths: Paths, run: str, x: np.ndarray, fold_of: np.ndarray, fold: int,
         log: Log) -> FoldJob:
    """Fold `fold` of run `run`, with its pseudo-labelled images if the run has a teacher."""
    val_idx = val_rows(fold_of, fold)
    return FoldJob(cfg, fold, train_rows(fold_of, fold), val_idx,
                   RunFiles(paths.run_dir(run)).fold(fold).root,
                   extra=pseudo_labels(cfg, paths, run, fold, x, val_idx, log))


def _train_serial(cfg: Config, paths: Paths, run: str, x: np.ndarray, y: np.ndarray,
                  fold_of: np.ndarray, todo: list[int], metas: list[dict[str, Any] | None],
                  log: Log) -> None:
    """Train the folds in `todo` one after another in this process."""
    for n, i in enumerate(todo):
        log(f"=== fold {i + 1}/{cfg.folds} ===")
        later = len(todo) - n - 1

        def eta(per_epoch: float, done: int, later: int = later) -> float:
            return per_epoch * ((cfg.epochs - done) + later * cfg.epochs)

        metas[i] = train_fold(_job(cfg, paths, run, x, fold_of, i, log), x, y, eta=eta, log=log)
        log(f"fold {i + 1}: val accuracy {metas[i]['val_accuracy']:.4f} "
            f"in {duration(metas[i]['seconds'])}")


def _fold_worker(cfg: Config, plan: Plan, threads: int, paths: Paths, run: str, fold: int,
                 later_rounds: int) -> dict[str, Any]:
    """A fold worker process: train one fold of the run; its metrics."""
    setup_tensorflow(cfg, plan, threads)
    x, y = load_train(paths.data / "train.csv", cache_dir=paths.runs / "cache")
    fold_of = load_npy(RunFiles(paths.run_dir(run)).folds)

    def eta(per_epoch: float, done: int) -> float:
        return per_epoch * ((cfg.epochs - done) + later_rounds * cfg.epochs)

    def log(message: str) -> None:
        print(message, flush=True)

    return train_fold(_job(cfg, paths, run, x, fold_of, fold, log), x, y, eta=eta, log=log)


def _train_parallel(cfg: Config, plan: Plan, paths: Paths, run: str, todo: list[int],
                    metas: list[dict[str, Any] | None], log: Log) -> None:
    """Train the folds in `todo`, `plan.processes` at a time, each in a fresh process."""
    jobs, at_once = [], plan.processes
    for n, i in enumerate(todo):
        start = n - n % at_once
        later = math.ceil(max(0, len(todo) - start - at_once) / at_once)
        threads = plan.threads_for(n, len(todo), cfg.threads)
        jobs.append(Job(f"fold {i + 1}", _fold_worker, (cfg, plan, threads, paths, run, i, later)))

    def started(n: int, job: Job, pid: int) -> None:
        log(f"=== fold {todo[n] + 1}/{cfg.folds} (process {pid}, {job.args[2]} thread(s)) ===")

    def finished(n: int, job: Job, meta: dict[str, Any]) -> None:
        metas[todo[n]] = meta
        log(f"fold {todo[n] + 1}: val accuracy {meta['val_accuracy']:.4f} "
            f"in {duration(meta['seconds'])}")

    run_jobs(jobs, at_once, on_start=started, on_done=finished, slot_env=plan.env_for_slot)


def _interrupted_where(rf: RunFiles, cfg: Config, todo: list[int],
                       metas: list[dict[str, Any] | None], parallel: bool) -> str:
    """What an interrupted run kept, and how to continue it."""
    running = [i for i in todo if metas[i] is None]
    if parallel or not running:
        return ("interrupted; finished folds and the last epoch of each running fold are saved — "
                "run the same command again to resume")
    state = rf.fold(running[0]).state
    after = f" after epoch {read_json(state)['epoch']}" if state.is_file() else ""
    return (f"interrupted in fold {running[0] + 1}/{cfg.folds}{after}; finished folds and the last "
            "epoch are saved — run the same command again to resume")


def summarize(rf: RunFiles, cfg: Config, y: np.ndarray, fold_of: np.ndarray,
              fold_meta: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Assemble out-of-fold probabilities and write the run's metrics.json and folds.csv."""
    # Held-out rows have no out-of-fold prediction: their rows stay zero and are left out here.
    oof = np.zeros((len(y), 10), dtype=np.float32)
    for i in range(cfg.folds):
        oof[load_npy(rf.fold(i).val_idx)] = load_npy(rf.fold(i).oof)
    save_npy(rf.oof, oof)
    rows = np.flatnonzero(fold_of != HOLDOUT)
    scores = fold_scores(oof[rows], y[rows])
    accs = np.array([m["val_accuracy"] for m in fold_meta])
    metrics = {
        "run": rf.name, "profile": cfg.profile, "model": cfg.model,
        "cv_accuracy": scores["val_accuracy"], "cv_log_loss": scores["val_loss"],
        "fold_accuracy_mean": float(accs.mean()), "fold_accuracy_std": float(accs.std()),
        "n_train": int(len(rows)), "n_holdout": int(len(y) - len(rows)),
        "train_seconds": round(sum(m["seconds"] for m in fold_meta), 2),
        "wall_seconds_last_invocation": round(wall, 2),
        "folds": [{k: v for k, v in m.items() if k != "sha256"} for m in fold_meta],
    }
    # Later stages (predict's holdout score, Kaggle submit) add their own keys; keep them.
    if rf.metrics.is_file():
        prev = read_json(rf.metrics)
        metrics.update({k: prev[k] for k in ("kaggle", "holdout") if k in prev})
    write_json(rf.metrics, metrics)
    write_text(rf.folds_csv, pd.DataFrame(fold_rows(metrics)).to_csv(index=False))
    return metrics


def fold_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-fold table of a run's metrics, as the console, folds.csv and the report show it."""
    return [{"fold": m["fold"], "val_accuracy": m["val_accuracy"], "val_loss": m["val_loss"],
             "best_epoch": m.get("best_epoch", ""), "epochs_run": m.get("epochs_run", ""),
             "seconds": m.get("seconds", 0)} for m in metrics["folds"]]


def fold_table(metrics: dict[str, Any]) -> str:
    """The per-fold table of a run, as the console shows it (`train`, `report`)."""
    return table([{"fold": r["fold"], "val_acc": f"{r['val_accuracy']:.4f}",
                   "val_loss": f"{r['val_loss']:.4f}", "best_ep": r["best_epoch"],
                   "time": duration(r["seconds"])} for r in fold_rows(metrics)])


def format_table(metrics: dict[str, Any]) -> str:
    """The per-fold table and mean ± std, as printed at the end of training."""
    return "\n".join([
        fold_table(metrics),
        f"mean ± std fold accuracy: {metrics['fold_accuracy_mean']:.4f} ± "
        f"{metrics['fold_accuracy_std']:.4f}",
        f"CV (out-of-fold) accuracy: {metrics['cv_accuracy']:.4f}  log loss "
        f"{metrics['cv_log_loss']:.4f}  folds took {duration(metrics['train_seconds'])} in all "
        f"({duration(metrics['wall_seconds_last_invocation'])} wall this time)"])


# --- the process ----------------------------------------------------------------------------

def setup_tensorflow(cfg: Config, plan: Plan, threads: int) -> None:
    """Configure this process's TensorFlow for the plan (threads, GPU memory, precision) and the
    config's determinism; must run before TensorFlow starts working."""
    apply(plan, threads)
    if cfg.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def environment(paths: Paths) -> dict[str, Any]:
    """Versions, git commit and data hashes, so a result can be traced to what produced it."""
    import keras
    import tensorflow as tf

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJ_ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJ_ROOT, capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip() != ""
    except OSError:
        commit, dirty = "", False
    data = {name: file_sha256(paths.data / name)
            for name in ("train.csv", "test.csv") if (paths.data / name).is_file()}
    return {
        "python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "git_commit": commit, "git_dirty": dirty,
        "data_dir": str(paths.data), "data_sha256": data,
    }
