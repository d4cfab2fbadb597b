"""A finished run loaded for inspection: its config, metrics, histories, out-of-fold and test
predictions, and the training and test images they belong to.

What `report` draws and the notebook explores; it only reads the run's files (through
`pipeline.runfiles`) and checks that the data found is the data the run was trained on. The
out-of-fold statistics a run trained before they were recorded lacks are derived in memory.

    rd = load_run(Path("runs"), "demo")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Paths, project_root
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import HOLDOUT
from pipeline.data.load import file_sha256
from pipeline.errors import UserError
from pipeline.files import load_npy, read_json
from pipeline.kaggle.history import read_history
from pipeline.prediction.metricsfile import with_oof_statistics
from pipeline.runfiles import RunFiles, finished_metrics, read_optional, read_split


@dataclass
class RunData:
    """Everything the report shows about one run, loaded through the pipeline's own files."""

    name: str
    run_dir: Path
    runs_dir: Path
    data_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]
    folds: pd.DataFrame
    histories: list[pd.DataFrame]
    x: np.ndarray
    y: np.ndarray
    oof: np.ndarray
    fold_of: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    prediction: dict[str, Any] | None = None
    kaggle_history: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> RunFiles:
        """The run folder's files."""
        return RunFiles(self.run_dir)

    @property
    def figures_dir(self) -> Path:
        """Where this run's PNGs go."""
        return self.files.figures

    @property
    def kaggle(self) -> dict[str, Any] | None:
        """The run's latest Kaggle submission, or None."""
        return self.kaggle_history[-1] if self.kaggle_history else None

    @property
    def study(self) -> str:
        """The Optuna study the run's config names ('' when none)."""
        return str(self.config.get("study") or "")


def trained_data_dir(env: dict[str, Any], data: Path | None) -> Path:
    """The data a run was trained on: `data` if given, else the folder env.json recorded."""
    if data is not None:
        return Path(data)
    recorded = env.get("data_dir")
    if recorded and DataFiles(Path(recorded)).train.is_file():
        return Path(recorded)
    return Paths.under(project_root()).data


def load_run(runs_dir: Path, run: str, data: Path | None = None) -> RunData:
    """Load a finished run, its training data and (if predicted) its test predictions."""
    runs_dir = Path(runs_dir)
    rf = RunFiles(runs_dir / run)
    metrics = finished_metrics(rf.root)
    config = read_json(rf.config)
    env = read_optional(rf.env) or {}
    data_dir = trained_data_dir(env, data)
    files = DataFiles(data_dir, runs_dir)
    train_csv = files.train
    expected = env.get("data_sha256", {}).get(train_csv.name)
    if expected and train_csv.is_file() and file_sha256(train_csv) != expected:
        raise UserError(f"{train_csv}: not the train.csv run '{run}' was trained on (checksum "
                        f"differs); pass --data with the folder it used ({env.get('data_dir')})")
    if not train_csv.is_file():
        raise UserError(f"{train_csv}: not found; the report needs the train.csv run '{run}' was "
                        "trained on: pass --data with its folder")
    x, y = files.labelled()
    oof = load_npy(rf.oof)
    if oof.shape != (len(y), 10):
        raise UserError(f"{rf.oof}: {oof.shape[0]} rows but {train_csv} has "
                        f"{len(y)}; pass --data with the folder the run was trained on")
    histories = []
    for i in range(len(metrics["folds"])):
        path = rf.fold(i).history
        histories.append(pd.read_csv(path) if path.is_file() else pd.DataFrame())
    folds = pd.read_csv(rf.folds_csv) if rf.folds_csv.is_file() else pd.DataFrame(metrics["folds"])
    fold_of = read_split(rf.root, len(y)) if rf.folds.is_file() else None
    if fold_of is not None and len(fold_of) == len(y) and (fold_of == HOLDOUT).any():
        # The OOF figures describe the rows that have out-of-fold predictions; the held-out
        # rows are scored by the ensemble instead (metrics.json "holdout").
        keep = fold_of != HOLDOUT
        x, y, oof, fold_of = x[keep], y[keep], oof[keep], fold_of[keep]
    metrics = with_oof_statistics(metrics, y, oof)
    rd = RunData(name=run, run_dir=rf.root, runs_dir=runs_dir, data_dir=data_dir, config=config,
                 metrics=metrics, env=env, folds=folds, histories=histories, x=x, y=y, oof=oof,
                 fold_of=fold_of if fold_of is not None and len(fold_of) == len(y) else None)

    if rf.test_probs.is_file():
        rd.prediction = read_optional(rf.prediction)
        test_csv = files.test
        probs = load_npy(rf.test_probs)
        if test_csv.is_file():
            test_x = files.unlabelled()
            if len(test_x) == len(probs):
                rd.test_x, rd.test_probs = test_x, probs
            else:
                rd.notes.append(f"test figures skipped: {test_csv} has {len(test_x)} images but "
                                f"the run predicted {len(probs)}")
        else:
            rd.notes.append(f"test figures skipped: {test_csv} not found")
    rd.kaggle_history = read_history(rf.kaggle)
    return rd
