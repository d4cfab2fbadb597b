"""Pseudo-labelling (opt-in, `pseudo_from`): fold k also trains on images its teacher fold labels.

The teacher is a finished run on the same split. Its fold-k model labels the test images and
fold k's own validation images (which it never saw), and the most confident `pseudo_keep` share
of each is added to fold k's training set, so the fold's validation accuracy measures what the
pseudo-labels do for the submission. The choice is saved as `fold_<i>/pseudo.npy`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config, Paths
from pipeline.console import Log
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import same_split
from pipeline.errors import UserError
from pipeline.files import load_npy, save_npy
from pipeline.prediction.inference import average_probs, load_fold_model
from pipeline.runfiles import RunFiles, load_run_config, read_split


def check_teacher(cfg: Config, paths: Paths, run: str, fold_of: np.ndarray) -> None:
    """Refuse a pseudo-labelling teacher that is this run, unfinished, or trained on other folds."""
    teacher = cfg.pseudo_from
    key = f"config: pseudo_from={teacher!r}"
    if teacher == run:
        raise UserError(f"{key} names this run itself; name a finished run trained on the same "
                        "folds (the teacher), or leave pseudo_from empty")
    teacher_files = RunFiles(paths.run_dir(teacher))
    if not (teacher_files.metrics.is_file() and teacher_files.folds.is_file()):
        raise UserError(f"{key}: no finished run '{teacher}' in {paths.runs}; train the teacher "
                        f"first (`python -m pipeline train --run {teacher}`)")
    theirs = read_split(teacher_files.root)
    if not same_split(theirs, fold_of):
        raise UserError(f"{key}: run '{teacher}' was trained on other folds (other data, folds or "
                        "seed), so its models have seen this run's validation images; train the "
                        "teacher with the same data, folds and seed")
    DataFiles.of(paths).unlabelled()  # fail now, not in a fold


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
    x_test = DataFiles.of(paths).unlabelled()
    path = RunFiles(paths.run_dir(run)).fold(fold).pseudo
    # Chosen once: a resumed fold must train on the same images (its step count depends on them).
    chosen = _saved_choice(path, val_idx, len(x_test))
    if chosen is None:
        teacher = paths.run_dir(cfg.pseudo_from)
        model = load_fold_model(teacher, fold)  # also checks the fold's files against their checksums
        test_probs = average_probs([model], x_test, tta=load_run_config(teacher).tta)
        # The teacher's out-of-fold predictions on these very images (check_teacher made sure
        # its folds are ours), made as its test ones were.
        val_probs = load_npy(RunFiles(teacher).fold(fold).oof)
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
