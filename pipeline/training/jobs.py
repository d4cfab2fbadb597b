"""The models a run trains, as jobs: each fold, and each refit member (`refit`), with its rows of
train.csv, its seed, its folder and, with `pseudo_from`, its pseudo-labelled images.

The run's models are listed by `RunFiles.models`: the folds first (for `fold_epochs` epochs when
the run has them), then the members, which train on every labelled row and have no validation
rows. The k-th model is seeded with
seed + 1000·k (+ 100,003 per model_seed), so no two models of a run draw the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.config import Config, Paths
from pipeline.console import Log
from pipeline.data.folds import HOLDOUT, train_rows, val_rows
from pipeline.runfiles import ModelEntry
from pipeline.training.pseudo import pseudo_labels


@dataclass(frozen=True)
class ModelJob:
    """One model to train: a fold, or a refit member (no validation rows)."""

    cfg: Config
    model: ModelEntry  # which of the run's models, and its folder
    train_idx: np.ndarray
    val_idx: np.ndarray  # empty for a member
    extra: tuple[np.ndarray, np.ndarray] | None = None  # pseudo-labelled images and labels
    checkpoint: bool = True  # save after every epoch so a killed fold resumes (tuning: off)

    @property
    def seed(self) -> int:
        """The seed of this model's weights, shuffling, augmentation and dropout."""
        return self.cfg.seed + 1000 * self.model.index + 100_003 * self.cfg.model_seed

    def fit_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels this model trains on: its rows (a stratified `subsample` of
        them), then its pseudo-labelled images."""
        rows = _subsample(self.train_idx, y, self.cfg.subsample, self.cfg.seed + self.model.index)
        if self.extra is None:
            return x[rows], y[rows]
        return (np.concatenate([x[rows], self.extra[0]]),
                np.concatenate([y[rows], self.extra[1].astype(y.dtype)]))


def job_for(cfg: Config, paths: Paths, run: str, x: np.ndarray, fold_of: np.ndarray,
            model: ModelEntry, log: Log) -> ModelJob:
    """The job of `model` of run `run`: a fold, with its pseudo-labelled images if the run has a
    teacher, or a member, on every labelled row."""
    if model.member:
        return ModelJob(cfg, model, np.flatnonzero(fold_of != HOLDOUT), np.zeros(0, np.int64))
    val_idx = val_rows(fold_of, model.number)
    return ModelJob(replace(cfg, epochs=cfg.model_epochs(member=False)), model,
                    train_rows(fold_of, model.number), val_idx, extra=pseudo_labels(cfg, paths, run, model.number, x, val_idx, log))


def _subsample(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified fraction of training rows; validation rows are never subsampled."""
    if fraction >= 1:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(keep)
