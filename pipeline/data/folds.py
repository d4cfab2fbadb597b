"""The split of train.csv: an optional held-out set, then a stratified k-fold of the rest.

Computed once per (labels, k, seed, holdout share) and reused by every command. It is stored as
one number per training row in `runs/folds/`: the row's fold (0..k-1), or `HOLDOUT` (-1) for a
row held out of every fold, so `tune`, `train` and `predict` always see the same split and no
fold, trial or pseudo-label ever touches a held-out row. `load_split` is the first step of
`train` and `tune`; a trained run's own copy is read back by `pipeline.runfiles.run_split`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline.config import Config, Paths
from pipeline.data.datafiles import DataFiles
from pipeline.errors import UserError
from pipeline.files import load_npy, save_npy

HOLDOUT = -1  # the fold number of a held-out row


class Split(NamedTuple):
    """train.csv's images and labels, and the fold (or HOLDOUT) of each row, as a run uses them."""

    x: np.ndarray  # (N, 28, 28, 1) uint8
    y: np.ndarray  # (N,) uint8
    fold_of: np.ndarray  # (N,) fold number per row

    @property
    def holdout(self) -> np.ndarray:
        """Indices of the held-out rows (empty without a holdout)."""
        return holdout_rows(self.fold_of)


def load_split(paths: Paths, cfg: Config) -> Split:
    """The labelled images and the split `cfg` asks for (folds, seed, holdout), the labels checked
    first: what `train` and `tune` start from."""
    data = DataFiles.of(paths)
    x, y = data.labelled()
    check_labels(y, cfg.folds, cfg.holdout, str(data.train))
    return Split(x, y, load_folds(paths.runs, y, cfg.folds, cfg.seed, cfg.holdout))


def labels_digest(y: np.ndarray) -> str:
    """A short fingerprint of the labels (which rows are which digit), naming what a split is of."""
    return hashlib.sha1(np.ascontiguousarray(y).tobytes()).hexdigest()[:12]


def folds_file(runs_dir: Path, y: np.ndarray, k: int, seed: int, holdout: float = 0.0) -> Path:
    """Where the split for these labels, k, seed and holdout share lives."""
    tail = f"-h{holdout:g}" if holdout > 0 else ""
    return Path(runs_dir) / "folds" / f"folds-{labels_digest(y)}-k{k}-s{seed}{tail}.npy"


def check_labels(y: np.ndarray, k: int, holdout: float, source: str) -> None:
    """Refuse labels that no split can use: digits missing, or too rare for k folds (and a holdout)."""
    counts = np.bincount(y, minlength=10)[:10]
    missing = [str(d) for d in range(10) if counts[d] == 0]
    if missing:
        raise UserError(f"{source}: no image of digit(s) {', '.join(missing)} among {len(y)} rows; "
                        "a model trained on it cannot predict those digits — use the full train.csv")
    need = k + (2 if holdout > 0 else 0)  # the holdout takes at least one image of each digit
    rare = [f"{d} ({counts[d]})" for d in range(10) if counts[d] < need]
    if rare:
        raise UserError(f"{source}: digit(s) {', '.join(rare)} have fewer than {need} images, too "
                        f"few for folds={k}{f' and holdout={holdout:g}' if holdout > 0 else ''}; "
                        "use more rows or fewer folds")


def make_folds(y: np.ndarray, k: int, seed: int, holdout: float = 0.0) -> np.ndarray:
    """Fold number (0..k-1, or HOLDOUT) of every row: a seeded stratified holdout share, then a
    seeded shuffled StratifiedKFold of the remaining rows."""
    fold_of = np.full(len(y), HOLDOUT, dtype=np.int8)
    rows = np.arange(len(y))
    if holdout > 0:
        rows, _ = train_test_split(rows, test_size=holdout, stratify=y, random_state=seed)
        rows = np.sort(rows)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, val) in enumerate(skf.split(np.zeros(len(rows)), y[rows])):
        fold_of[rows[val]] = i
    return fold_of


def load_folds(runs_dir: Path, y: np.ndarray, k: int, seed: int, holdout: float = 0.0) -> np.ndarray:
    """The saved split for (y, k, seed, holdout), creating it on first use."""
    path = folds_file(runs_dir, y, k, seed, holdout)
    if path.is_file():
        try:
            fold_of = load_npy(path)
        except ValueError:  # a damaged cache file is rebuilt: the split is deterministic
            fold_of = None
        if (fold_of is not None and fold_of.shape == y.shape and fold_of.max() == k - 1
                and fold_of.min() == (HOLDOUT if holdout > 0 else 0)):
            return fold_of
    fold_of = make_folds(y, k, seed, holdout)
    save_npy(path, fold_of)
    return fold_of


def same_split(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two splits (fold number per row), or two lists of rows, are the same row for row."""
    return bool(np.array_equal(a, b))


def holdout_rows(fold_of: np.ndarray) -> np.ndarray:
    """Indices of the held-out rows (empty without a holdout)."""
    return np.flatnonzero(fold_of == HOLDOUT)


def train_rows(fold_of: np.ndarray, fold: int) -> np.ndarray:
    """Indices fold `fold` trains on: every other fold's rows, never a held-out one."""
    return np.flatnonzero((fold_of != fold) & (fold_of != HOLDOUT))


def val_rows(fold_of: np.ndarray, fold: int) -> np.ndarray:
    """Indices fold `fold` is validated on."""
    return np.flatnonzero(fold_of == fold)
