"""k-fold cross-validated training: one model per fold, out-of-fold predictions, resumable.

Writes `runs/<run>/` — config.json, env.json, folds.npy, oof_probs.npy, metrics.json, folds.csv —
and per fold `fold_<i>/` with model.keras, history.csv and metrics.json. A checkpoint after
every epoch (`fold_<i>/last.keras` + `state.json`) lets an interrupted run continue where it
stopped; finished folds are verified by checksum and skipped. With `pseudo_from` each fold also
trains on images its teacher fold labelled (`fold_<i>/pseudo.npy`).

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config as config_mod
from pipeline.config import PROJ_ROOT, Config, Paths
from pipeline.data import file_sha256, load_test, load_train
from pipeline.errors import Interrupted, UserError
from pipeline.files import (load_npy, read_json, remove_stale_temps, run_lock, save_keras, save_npy,
                            write_json, write_text)
from pipeline.folds import HOLDOUT, check_labels, load_folds, train_rows, val_rows

# Keys that change how a run is executed or submitted but not what its models learn, so a run
# can be resumed or predicted with different values.
NON_TRAINING_KEYS = {"threads", "workers", "competition", "deterministic"}

Log = Callable[[str], None]


def setup_tensorflow(cfg: Config) -> None:
    """Apply thread and determinism settings; must run before TensorFlow starts working."""
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    if cfg.workers > 1:
        # Fold workers share the GPU; by default each process would reserve all of its memory.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _intact_meta(fold_dir: Path) -> dict[str, Any] | None:
    """The fold's metrics.json if it exists and every file still matches its recorded checksum."""
    meta_path = fold_dir / "metrics.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
    except UserError:
        return None
    if not isinstance(meta, dict) or not meta.get("sha256"):
        return None
    for name, digest in meta["sha256"].items():
        path = fold_dir / name
        if not path.is_file() or file_sha256(path) != digest:
            return None
    return meta


def fold_intact(fold_dir: Path) -> bool:
    """True when the fold finished and its files still match the checksums it recorded."""
    return _intact_meta(fold_dir) is not None


def fold_done(fold_dir: Path, log: Log = print) -> dict[str, Any] | None:
    """The finished fold's metrics, or None if it must be (re)trained."""
    meta_path = fold_dir / "metrics.json"
    if not meta_path.is_file():
        return None
    meta = _intact_meta(fold_dir)
    if meta is None:
        log(f"{fold_dir.name}: saved files are missing or corrupt (checksum mismatch); retraining this fold")
        meta_path.unlink(missing_ok=True)
    return meta


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Refuse to continue a run that was started with a different training config."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    saved = read_json(saved_path)
    now = cfg.to_dict()
    diff = [k for k in now if k not in NON_TRAINING_KEYS and saved.get(k) != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in diff[:4])
        raise UserError(f"run '{run_dir.name}' was started with another config ({changes}); "
                        "use a new --run name, or `make clean-run RUN=...` to start it over")


def check_same_split(run_dir: Path, fold_of: np.ndarray) -> None:
    """Refuse to resume a run whose saved split (folds and holdout) differs from this one's."""
    saved = run_dir / "folds.npy"
    if not saved.is_file():
        return
    try:
        theirs = load_npy(saved)
    except ValueError:
        theirs = None
    if theirs is None or theirs.shape != fold_of.shape or not np.array_equal(theirs, fold_of):
        raise UserError(f"{saved}: run '{run_dir.name}' was split differently (other train.csv, "
                        "folds, seed or holdout, or the file is damaged); use a new --run name, or "
                        "`make clean-run RUN=...` to start it over")


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


class _EpochEnd:
    """Keras callback factory kept outside Keras import time (keras loads lazily)."""

    @staticmethod
    def make(fold_dir: Path, history: list[dict[str, Any]], t_start: float, elapsed_before: float,
             fold: int, folds: int, epochs: int, eta: Callable[[float, int], float], log: Log):
        import keras

        class EpochEnd(keras.callbacks.Callback):
            """Record lr, checkpoint the model and history, and print elapsed time and ETA."""

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = dict(logs or {})
                lr = self.model.optimizer.learning_rate
                row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                       "learning_rate": float(np.asarray(lr))}
                history.append(row)
                elapsed = elapsed_before + time.time() - t_start
                # History first, then the model, then state: a kill between any two leaves a
                # history at least as long as the checkpoint, whose optimizer step count says
                # which epoch it holds (see `_resume`).
                write_text(fold_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
                save_keras(self.model, fold_dir / "last.keras")
                write_json(fold_dir / "state.json", {"epoch": epoch + 1, "elapsed": elapsed,
                                                     "rng": _rng_states(self.model)})
                per_epoch = elapsed / max(1, len(history))
                scores = " ".join(f"{k} {row[k]:.4f}" for k in
                                  ("loss", "accuracy", "val_loss", "val_accuracy") if k in row)
                log(f"  fold {fold + 1}/{folds} epoch {epoch + 1:>2}/{epochs} · {scores} · "
                    f"lr {row['learning_rate']:.1e} · {_fmt(elapsed)} · run ETA "
                    f"{_fmt(eta(per_epoch, epoch + 1))}")

        return EpochEnd()


def _subsample(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified fraction of training rows; validation rows are never subsampled."""
    if fraction >= 1:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(keep)


def _tensorboard(fold_dir: Path) -> list:
    """Per-epoch TensorBoard scalars in `fold_<i>/tb/` for `make tensorboard`; none without the package."""
    import importlib.util

    import keras

    # Keras' callback writes through tf.summary, which needs the tensorboard package.
    if importlib.util.find_spec("tensorboard") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(fold_dir / "tb"), histogram_freq=0,
                                        write_graph=False, update_freq="epoch", profile_batch=0)]


def _seed_generators(model: Any) -> list[Any]:
    """The random-number streams of the model's augmentation and dropout layers, in layer order."""
    import keras

    return [v for layer in model.layers for v in vars(layer).values()
            if isinstance(v, keras.random.SeedGenerator)]


def _rng_states(model: Any) -> list[list[int]]:
    """Where each random layer's stream stands; Keras does not save it with the model."""
    return [np.asarray(g.state.value).tolist() for g in _seed_generators(model)]


def _resume(fold_dir: Path, fold: int, steps: int,
            log: Log) -> tuple[Any, int, float, list[dict[str, Any]]]:
    """The fold's last checkpoint as (model, epochs done, seconds spent, history); no model if none."""
    from pipeline.model import load_model

    state_path, last, hist_path = (fold_dir / n for n in ("state.json", "last.keras", "history.csv"))
    if not (last.is_file() and hist_path.is_file()):
        return None, 0, 0.0, []
    try:
        model = load_model(str(last))
        # The optimizer's step count is saved inside the model, so it cannot disagree with it.
        done = int(model.optimizer.iterations) // steps
        history = pd.read_csv(hist_path).head(done).to_dict("records")
        if done < 1 or len(history) != done:
            raise ValueError(f"history has {len(history)} rows, checkpoint {done} epochs")
        state = read_json(state_path) if state_path.is_file() else {}
        state = state if isinstance(state, dict) else {}
        elapsed = float(state.get("elapsed", 0.0))
        # Continue the augmentation/dropout streams instead of replaying epoch 1's draws.
        generators, rng = _seed_generators(model), state.get("rng", [])
        if len(rng) == len(generators):
            for gen, value in zip(generators, rng):
                gen.state.assign(np.asarray(value, dtype=gen.state.dtype))
    except Exception as exc:  # a checkpoint torn by a kill or damaged on disk: never use it
        log(f"  fold {fold + 1}: checkpoint unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); restarting this fold")
        return None, 0, 0.0, []
    log(f"  resuming fold {fold + 1} after epoch {done} ({_fmt(elapsed)} done)")
    return model, done, elapsed, history


def check_teacher(cfg: Config, paths: Paths, run: str, fold_of: np.ndarray) -> None:
    """Refuse a pseudo-labelling teacher that is this run, unfinished, or trained on other folds."""
    teacher = cfg.pseudo_from
    key = f"config: pseudo_from={teacher!r}"
    if teacher == run:
        raise UserError(f"{key} names this run itself; name a finished run trained on the same "
                        "folds (the teacher), or leave pseudo_from empty")
    teacher_dir = paths.run_dir(teacher)
    if not ((teacher_dir / "metrics.json").is_file() and (teacher_dir / "folds.npy").is_file()):
        raise UserError(f"{key}: no finished run '{teacher}' in {paths.runs}; train the teacher "
                        f"first (`python -m pipeline train --run {teacher}`)")
    theirs = load_npy(teacher_dir / "folds.npy")
    if theirs.shape != fold_of.shape or not np.array_equal(theirs, fold_of):
        raise UserError(f"{key}: run '{teacher}' was trained on other folds (other data, folds or "
                        "seed), so its models have seen this run's validation images; train the "
                        "teacher with the same data, folds and seed")
    load_test(paths.data / "test.csv", cache_dir=paths.runs / "cache")  # fail now, not in a fold


# Rows of `fold_<i>/pseudo.npy`: (source, row, label), source 0 = a test.csv row, 1 = a train.csv
# row of this fold's validation set (whose own label is never used).
PSEUDO_TEST, PSEUDO_VAL = 0, 1


def _top(probs: np.ndarray, rows: np.ndarray, keep: float, source: int) -> np.ndarray:
    """(source, row, label) for the `keep` share of `rows` whose predictions are most confident."""
    n = max(1, round(keep * len(rows)))
    best = np.sort(np.argsort(-probs.max(1), kind="stable")[:n])
    return np.stack([np.full(n, source), rows[best], probs[best].argmax(1)], axis=1).astype(np.int64)


def _saved_choice(path: Path, val_idx: np.ndarray, n_test: int) -> np.ndarray | None:
    """A fold's saved `pseudo.npy` if it is readable and points at rows that exist, else None."""
    try:
        chosen = load_npy(path) if path.is_file() else None
    except ValueError:
        return None
    if chosen is None or chosen.ndim != 2 or chosen.shape[1] != 3:
        return None
    source, rows = chosen[:, 0], chosen[:, 1]
    ok = np.where(source == PSEUDO_VAL, np.isin(rows, val_idx),
                  (source == PSEUDO_TEST) & (rows >= 0) & (rows < n_test))
    return chosen if ok.all() else None


def pseudo_labels(cfg: Config, paths: Paths, run: str, fold: int, x: np.ndarray,
                  val_idx: np.ndarray, log: Log = print) -> tuple[np.ndarray, np.ndarray] | None:
    """The images and labels fold `fold` adds to its training set; None without a teacher.

    The teacher's fold model labels the test images and this fold's validation images, and the
    most confident `pseudo_keep` share of each is used. The validation images are then in the
    same position as the test images (unlabelled images the teacher labelled), so the fold's
    validation accuracy measures what pseudo-labelling does for the submission.
    """
    if not cfg.pseudo_from:
        return None
    x_test = load_test(paths.data / "test.csv", cache_dir=paths.runs / "cache")
    path = paths.run_dir(run) / f"fold_{fold}" / "pseudo.npy"
    # Chosen once: a resumed fold must train on the same images (its step count depends on them).
    chosen = _saved_choice(path, val_idx, len(x_test))
    if chosen is None:
        from pipeline.ensemble import average_probs, load_fold_model  # late: ensemble imports us

        teacher = paths.run_dir(cfg.pseudo_from)
        model = load_fold_model(teacher, fold)  # also checks the fold's files against their checksums
        test_probs = average_probs([model], x_test, tta=load_run_config(teacher).tta)
        # The teacher's out-of-fold predictions on these very images (check_teacher made sure
        # its folds are ours), made as its test ones were.
        val_probs = load_npy(teacher / f"fold_{fold}" / "oof.npy")
        chosen = np.concatenate([_top(test_probs, np.arange(len(x_test)), cfg.pseudo_keep, PSEUDO_TEST),
                                 _top(val_probs, val_idx, cfg.pseudo_keep, PSEUDO_VAL)])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npy(path, chosen)
    is_val = chosen[:, 0] == PSEUDO_VAL
    log(f"  fold {fold + 1}: + {int((~is_val).sum())} test and {int(is_val.sum())} validation "
        f"images labelled by run '{cfg.pseudo_from}' (its {cfg.pseudo_keep:.0%} most confident of each)")
    images = np.empty((len(chosen), *x.shape[1:]), dtype=x.dtype)
    images[is_val] = x[chosen[is_val, 1]]
    images[~is_val] = x_test[chosen[~is_val, 1]]
    return images, chosen[:, 2]


def train_fold(cfg: Config, x: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
               val_idx: np.ndarray, fold_dir: Path, fold: int,
               eta: Callable[[float, int], float] = lambda per_epoch, done: 0.0,
               callbacks: list | None = None, log: Log = print,
               extra: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Train one fold (continuing from its last checkpoint if any), on `extra` images and labels
    too if given (pseudo-labels); return its metrics."""
    import keras

    from pipeline.model import build_model

    fold_dir.mkdir(parents=True, exist_ok=True)
    base_seed = cfg.seed + 1000 * fold + 100_003 * cfg.model_seed
    keras.utils.set_random_seed(base_seed)
    train_idx = _subsample(train_idx, y, cfg.subsample, cfg.seed + fold)
    x_fit, y_fit = x[train_idx], y[train_idx]
    if extra is not None:
        x_fit = np.concatenate([x_fit, extra[0]])
        y_fit = np.concatenate([y_fit, extra[1].astype(y.dtype)])
    steps = math.ceil(len(x_fit) / cfg.batch_size)

    state_path, last = fold_dir / "state.json", fold_dir / "last.keras"
    model, initial_epoch, elapsed_before, history = _resume(fold_dir, fold, steps, log)
    if model is None:
        model = build_model(cfg, steps_per_epoch=steps)
    else:
        # A new fit() would otherwise shuffle its first epoch exactly like epoch 1.
        keras.utils.set_random_seed(base_seed + initial_epoch)

    t_start = time.time()
    cbs = [_EpochEnd.make(fold_dir, history, t_start, elapsed_before, fold, cfg.folds, cfg.epochs,
                          eta, log), *_tensorboard(fold_dir)]
    if cfg.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.early_stopping,
                                                 restore_best_weights=True))
    cbs.extend(callbacks or [])
    if initial_epoch < cfg.epochs:
        model.fit(x_fit, y_fit, batch_size=cfg.batch_size, epochs=cfg.epochs,
                  initial_epoch=initial_epoch, validation_data=(x[val_idx], y[val_idx]),
                  validation_batch_size=1024,  # inference needs no small batches
                  callbacks=cbs, verbose=0, shuffle=True)
    from pipeline.ensemble import average_probs  # late: ensemble imports this module

    # Out-of-fold predictions are made exactly as test predictions are (TTA included), so the
    # CV accuracy estimates what the submission will score.
    probs = average_probs([model], x[val_idx], tta=cfg.tta)
    seconds = elapsed_before + time.time() - t_start

    save_keras(model, fold_dir / "model.keras")
    save_npy(fold_dir / "oof.npy", probs)
    save_npy(fold_dir / "val_idx.npy", val_idx.astype(np.int64))
    hist = pd.DataFrame(history)
    write_text(fold_dir / "history.csv", hist.to_csv(index=False))
    val_acc = float(np.mean(probs.argmax(1) == y[val_idx]))
    val_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(val_idx)), y[val_idx]], 1e-7, 1))))
    best_epoch = int(hist["val_accuracy"].idxmax() + 1) if "val_accuracy" in hist else len(hist)
    meta = {
        "fold": fold + 1, "val_accuracy": val_acc, "val_loss": val_loss, "best_epoch": best_epoch,
        "epochs_run": len(hist), "seconds": round(seconds, 2), "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)), "n_pseudo": int(len(x_fit) - len(train_idx)),
        "sha256": {name: file_sha256(fold_dir / name)
                   for name in ("model.keras", "oof.npy", "val_idx.npy", "history.csv",
                                *(("pseudo.npy",) if extra is not None else ()))},
    }
    write_json(fold_dir / "metrics.json", meta)
    last.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    return meta


def _train_run_fold(cfg: Config, paths: Paths, run: str, x: np.ndarray, y: np.ndarray,
                    fold_of: np.ndarray, fold: int, eta: Callable[[float, int], float],
                    log: Log) -> dict[str, Any]:
    """Train fold `fold` of run `run`, with its pseudo-labelled images if it has a teacher."""
    val_idx = val_rows(fold_of, fold)
    return train_fold(cfg, x, y, train_rows(fold_of, fold), val_idx,
                      paths.run_dir(run) / f"fold_{fold}", fold, eta=eta, log=log,
                      extra=pseudo_labels(cfg, paths, run, fold, x, val_idx, log))


def summarize(run_dir: Path, cfg: Config, y: np.ndarray, fold_meta: list[dict[str, Any]],
              wall: float) -> dict[str, Any]:
    """Assemble out-of-fold probabilities and write the run's metrics.json and folds.csv."""
    # Held-out rows have no out-of-fold prediction: their rows stay zero and are left out here.
    oof = np.zeros((len(y), 10), dtype=np.float32)
    for i in range(cfg.folds):
        fold_dir = run_dir / f"fold_{i}"
        oof[load_npy(fold_dir / "val_idx.npy")] = load_npy(fold_dir / "oof.npy")
    save_npy(run_dir / "oof_probs.npy", oof)
    rows = np.flatnonzero(load_npy(run_dir / "folds.npy") != HOLDOUT)
    pred = oof[rows].argmax(1)
    accs = np.array([m["val_accuracy"] for m in fold_meta])
    metrics = {
        "run": run_dir.name, "profile": cfg.profile, "model": cfg.model,
        "cv_accuracy": float(np.mean(pred == y[rows])),
        "cv_log_loss": float(-np.mean(np.log(np.clip(oof[rows, y[rows]], 1e-7, 1)))),
        "fold_accuracy_mean": float(accs.mean()), "fold_accuracy_std": float(accs.std()),
        "n_train": int(len(rows)), "n_holdout": int(len(y) - len(rows)),
        "train_seconds": round(sum(m["seconds"] for m in fold_meta), 2),
        "wall_seconds_last_invocation": round(wall, 2),
        "folds": [{k: v for k, v in m.items() if k != "sha256"} for m in fold_meta],
    }
    # Later stages (report, Kaggle submit) add their own keys; keep them across re-runs.
    old = run_dir / "metrics.json"
    if old.is_file():
        prev = read_json(old)
        for key in ("kaggle", "holdout"):
            if key in prev:
                metrics[key] = prev[key]
    write_json(run_dir / "metrics.json", metrics)
    table = pd.DataFrame([{"fold": m["fold"], "val_accuracy": m["val_accuracy"],
                           "val_loss": m["val_loss"], "best_epoch": m["best_epoch"],
                           "epochs_run": m["epochs_run"], "seconds": m["seconds"]}
                          for m in fold_meta])
    write_text(run_dir / "folds.csv", table.to_csv(index=False))
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """The per-fold table and mean ± std, as printed at the end of training."""
    lines = [f"{'fold':>4}  {'val_acc':>8}  {'val_loss':>8}  {'best_ep':>7}  {'time':>7}"]
    for m in metrics["folds"]:
        lines.append(f"{m['fold']:>4}  {m['val_accuracy']:>8.4f}  {m['val_loss']:>8.4f}  "
                     f"{m['best_epoch']:>7}  {_fmt(m['seconds']):>7}")
    lines.append(f"mean ± std fold accuracy: {metrics['fold_accuracy_mean']:.4f} ± "
                 f"{metrics['fold_accuracy_std']:.4f}")
    lines.append(f"CV (out-of-fold) accuracy: {metrics['cv_accuracy']:.4f}  "
                 f"log loss {metrics['cv_log_loss']:.4f}  folds took {_fmt(metrics['train_seconds'])} "
                 f"in all ({_fmt(metrics['wall_seconds_last_invocation'])} wall this time)")
    return "\n".join(lines)


def train_run(cfg: Config, paths: Paths, run: str, log: Log = print,
              provenance: dict[str, Any] | None = None,
              max_folds: int | None = None) -> dict[str, Any] | None:
    """Train (or resume) the folds of `run`; its metrics, or None if `max_folds` left some out."""
    run_dir = paths.run_dir(run)
    with run_lock(run_dir, log):
        remove_stale_temps(run_dir)  # left by a killed run; safe to sweep while we hold the lock
        check_resumable(run_dir, cfg)
        t0 = time.time()
        x, y = load_train(paths.data / "train.csv", cache_dir=paths.runs / "cache")
        check_labels(y, cfg.folds, cfg.holdout, str(paths.data / "train.csv"))
        setup_tensorflow(cfg)
        fold_of = load_folds(paths.runs, y, cfg.folds, cfg.seed, cfg.holdout)
        check_same_split(run_dir, fold_of)
        if cfg.pseudo_from:
            check_teacher(cfg, paths, run, fold_of)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "env.json", {**environment(paths), **(provenance or {})})
        save_npy(run_dir / "folds.npy", fold_of)
        log(f"run '{run}': profile {cfg.profile}, model {cfg.model}, {cfg.folds} folds × "
            f"{cfg.epochs} epochs on {len(y)} images"
            f"{f' + images pseudo-labelled by run {cfg.pseudo_from!r}' if cfg.pseudo_from else ''}"
            f" → {run_dir}")

        metas: list[dict[str, Any] | None] = [fold_done(run_dir / f"fold_{i}", log)
                                              for i in range(cfg.folds)]
        todo = [i for i, m in enumerate(metas) if m is None]
        skipped = cfg.folds - len(todo)
        if skipped:
            log(f"resuming: {skipped} finished fold(s) kept, {len(todo)} to train")
        if max_folds is not None and len(todo) > max_folds:
            todo = todo[:max_folds]
            log(f"--max-folds {max_folds}: training fold(s) {', '.join(str(i + 1) for i in todo)} only")
        current = {"fold": -1}
        parallel = cfg.workers > 1 and len(todo) > 1
        try:
            if parallel:
                _train_parallel(cfg, paths, run, todo, metas, log)
            else:
                for n, i in enumerate(todo):
                    current["fold"] = i
                    log(f"=== fold {i + 1}/{cfg.folds} ===")
                    folds_left = len(todo) - n - 1

                    def eta(per_epoch: float, done: int, folds_left: int = folds_left) -> float:
                        return per_epoch * ((cfg.epochs - done) + folds_left * cfg.epochs)

                    metas[i] = _train_run_fold(cfg, paths, run, x, y, fold_of, i, eta, log)
                    log(f"fold {i + 1}: val accuracy {metas[i]['val_accuracy']:.4f} "
                        f"in {_fmt(metas[i]['seconds'])}")
        except KeyboardInterrupt:
            if parallel:
                raise Interrupted("interrupted; finished folds and the last epoch of each running "
                                  "fold are saved — run the same command again to resume") from None
            where = f"fold {current['fold'] + 1}/{cfg.folds}"
            state = run_dir / f"fold_{current['fold']}" / "state.json"
            if state.is_file():
                where += f" after epoch {read_json(state)['epoch']}"
            raise Interrupted(f"interrupted in {where}; finished folds and the last epoch are "
                              "saved — run the same command again to resume") from None
        if any(m is None for m in metas):
            left = [str(i + 1) for i, m in enumerate(metas) if m is None]
            log(f"run '{run}' is partial: fold(s) {', '.join(left)} still to train; "
                "run the command again without --max-folds to finish it")
            return None
        metrics = summarize(run_dir, cfg, y, [m for m in metas if m is not None], time.time() - t0)
        log(format_table(metrics))
        return metrics


def _fold_threads(cfg: Config, n: int, total: int) -> int:
    """Threads for the n-th of `total` folds trained `cfg.workers` at a time: the cores split
    among the folds that start together, so a last fold trained alone gets them all."""
    if cfg.threads:
        return cfg.threads
    start = n - n % cfg.workers
    return max(1, (os.cpu_count() or 1) // min(cfg.workers, total - start))


def _exit_with_parent(parent: int) -> None:
    """End this process if its parent dies, so a killed run leaves no fold training behind it."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _fold_main(cfg: Config, paths: Paths, run: str, fold: int, later_rounds: int, parent: int,
               conn: Any) -> None:
    """Entry point of a fold's worker process: train the fold, send back its metrics or error."""
    import signal

    _exit_with_parent(parent)
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        setup_tensorflow(cfg)
        x, y = load_train(paths.data / "train.csv", cache_dir=paths.runs / "cache")
        fold_of = load_npy(paths.run_dir(run) / "folds.npy")

        def eta(per_epoch: float, done: int) -> float:
            return per_epoch * ((cfg.epochs - done) + later_rounds * cfg.epochs)

        def log(message: str) -> None:
            print(message, flush=True)

        meta = _train_run_fold(cfg, paths, run, x, y, fold_of, fold, eta, log)
        conn.send(("ok", meta))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the reply
        conn.send(("interrupted", ""))
    except UserError as exc:
        conn.send(("error", str(exc)))
    except BaseException:
        import traceback

        conn.send(("crash", traceback.format_exc()))


def _train_parallel(cfg: Config, paths: Paths, run: str, todo: list[int],
                    metas: list[dict[str, Any] | None], log: Log) -> None:
    """Train the folds in `todo`, `cfg.workers` at a time, each in a fresh process."""
    import multiprocessing
    import signal
    from dataclasses import replace

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once TensorFlow has threads
    pending = list(enumerate(todo))
    running: list[tuple[int, Any, Any]] = []
    try:
        while pending or running:
            while pending and len(running) < cfg.workers:
                n, i = pending.pop(0)
                threads = _fold_threads(cfg, n, len(todo))
                start = n - n % cfg.workers
                later = math.ceil(max(0, len(todo) - start - cfg.workers) / cfg.workers)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_fold_main, name=f"fold-{i + 1}",
                                   args=(replace(cfg, threads=threads), paths, run, i, later,
                                         os.getpid(), send))
                proc.start()
                send.close()
                log(f"=== fold {i + 1}/{cfg.folds} (process {proc.pid}, {threads} thread(s)) ===")
                running.append((i, proc, receive))
            time.sleep(0.2)
            for entry in [r for r in running if r[2].poll() or not r[1].is_alive()]:
                i, proc, receive = entry
                kind, value = receive.recv() if receive.poll() else ("died", proc.exitcode)
                proc.join()
                running.remove(entry)
                if kind == "ok":
                    metas[i] = value
                    log(f"fold {i + 1}: val accuracy {value['val_accuracy']:.4f} "
                        f"in {_fmt(value['seconds'])}")
                elif kind == "interrupted":
                    raise KeyboardInterrupt
                elif kind == "error":
                    raise UserError(value)
                elif kind == "crash":
                    raise RuntimeError(f"fold {i + 1} failed in its worker process:\n{value}")
                else:
                    raise UserError(f"fold {i + 1}: its worker process died (exit code {value}, "
                                    "e.g. killed for memory); run the same command again to "
                                    "resume from its last epoch")
    finally:
        # On any failure stop the other folds; their last epochs are saved. A Ctrl-C from the
        # terminal has reached them already: give them a moment before sending one more.
        deadline = time.time() + 3
        for _, proc, _ in running:
            proc.join(timeout=max(0.0, deadline - time.time()))
        for _, proc, _ in running:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)
        for _, proc, _ in running:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()


def load_run_config(run_dir: Path) -> Config:
    """The config a run was trained with."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no such run (no config.json); train it first with "
                        f"`python -m pipeline train --run {run_dir.name}`")
    return config_mod.from_dict(read_json(path), str(path))


def latest_complete_run(runs_dir: Path) -> str:
    """Name of the most recently finished run (one with metrics.json)."""
    done = sorted((p for p in runs_dir.glob("*/metrics.json") if (p.parent / "config.json").is_file()),
                  key=lambda p: p.stat().st_mtime)
    if not done:
        raise UserError(f"{runs_dir}: no finished run found; run `make train` (or `make demo`) first")
    return done[-1].parent.name
