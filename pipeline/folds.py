"""Stratified k-fold split, computed once per (labels, k, seed) and reused by every command.

The split is stored as one fold index per training row in `runs/folds/`, named by a hash of
the labels, k and the seed, so `tune`, `train` and `predict` always see the same folds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline.files import load_npy, save_npy


def folds_file(runs_dir: Path, y: np.ndarray, k: int, seed: int) -> Path:
    """Where the split for these labels, k and seed lives."""
    digest = hashlib.sha1(np.ascontiguousarray(y).tobytes()).hexdigest()[:12]
    return Path(runs_dir) / "folds" / f"folds-{digest}-k{k}-s{seed}.npy"


def make_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every row, from a seeded shuffled StratifiedKFold."""
    fold_of = np.full(len(y), -1, dtype=np.int8)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):
        fold_of[val] = i
    return fold_of


def load_folds(runs_dir: Path, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The saved split for (y, k, seed), creating it on first use."""
    path = folds_file(runs_dir, y, k, seed)
    if path.is_file():
        fold_of = load_npy(path)
        if fold_of.shape == y.shape and fold_of.min() == 0 and fold_of.max() == k - 1:
            return fold_of
    fold_of = make_folds(y, k, seed)
    save_npy(path, fold_of)
    return fold_of
