"""The models a run trains, as jobs: each fold, and each refit member (`refit`), with its rows of
train.csv, its seed, its folder and, with `pseudo_from`, its pseudo-labelled images.

Models are numbered 0 … folds + refit - 1: the folds first, then the members, which train on
every labelled row and have no validation rows. Model k is seeded with seed + 1000·k (+ 100,003
per model_seed), so no two models of a run draw the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config, Paths
from pipeline.console import Log
from pipeline.data.folds import HOLDOUT, train_rows, val_rows
from pipeline.runfiles import RunFiles
from pipeline.training.pseudo import pseudo_labels


@dataclass(frozen=True)
class FoldJob:
    """One model to train: a fold, or a refit member (no validation rows)."""

    cfg: Config
    fold: int  # 0-based among the run's models: folds first, then members
    train_idx: np.ndarray
    val_idx: np.ndarray  # empty for a member
    folder: Path
    extra: tuple[np.ndarray, np.ndarray] | None = None  # pseudo-labelled images and labels
    checkpoint: bool = True  # save after every epoch so a killed fold resumes (tuning: off)

    @property
    def label(self) -> str:
        """How the console names this model: "fold 2", "member 1"."""
        return model_label(self.cfg, self.fold)

    @property
    def of(self) -> str:
        """The label with the count of its kind: "fold 2/5"."""
        return model_label(self.cfg, self.fold, of=True)

    @property
    def seed(self) -> int:
        """The seed of this model's weights, shuffling, augmentation and dropout."""
        return self.cfg.seed + 1000 * self.fold + 100_003 * self.cfg.model_seed

    def fit_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels this model trains on: its rows (a stratified `subsample` of
        them), then its pseudo-labelled images."""
        rows = _subsample(self.train_idx, y, self.cfg.subsample, self.cfg.seed + self.fold)
        if self.extra is None:
            return x[rows], y[rows]
        return (np.concatenate([x[rows], self.extra[0]]),
                np.concatenate([y[rows], self.extra[1].astype(y.dtype)]))


def model_label(cfg: Config, k: int, of: bool = False) -> str:
    """The run's k-th model (0-based) as the console names it: "fold 2" ("fold 2/5"), "member 1"."""
    if k < cfg.folds:
        return f"fold {k + 1}" + (f"/{cfg.folds}" if of else "")
    return f"member {k - cfg.folds + 1}" + (f"/{cfg.refit}" if of else "")


def job_for(cfg: Config, paths: Paths, run: str, x: np.ndarray, fold_of: np.ndarray, k: int,
            log: Log) -> FoldJob:
    """Model `k` of run `run`: a fold, with its pseudo-labelled images if the run has a teacher,
    or a member, on every labelled row."""
    folder = RunFiles(paths.run_dir(run)).models(cfg)[k].root
    if k >= cfg.folds:
        return FoldJob(cfg, k, np.flatnonzero(fold_of != HOLDOUT), np.zeros(0, np.int64), folder)
    val_idx = val_rows(fold_of, k)
    return FoldJob(cfg, k, train_rows(fold_of, k), val_idx, folder,
                   extra=pseudo_labels(cfg, paths, run, k, x, val_idx, log))


def _subsample(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified fraction of training rows; validation rows are never subsampled."""
    if fraction >= 1:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(keep)
