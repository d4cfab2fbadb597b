"""What the holdout analysis scripts share: the command line (--run, --data, --runs-dir) and a
finished holdout run's held-out rows with its fold models."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, Paths, project_root
from pipeline.console import quiet_tensorflow
from pipeline.data.datafiles import DataFiles
from pipeline.runfiles import RunFiles, load_run_config, run_split


@dataclass
class HeldRun:
    """A finished run trained with `holdout`: its files, config, held-out rows and fold models."""

    name: str
    files: RunFiles
    cfg: Config
    rows: np.ndarray  # row indices of train.csv held out
    x: np.ndarray  # their images
    y: np.ndarray  # their labels
    models: list[Any]


def load(description: str) -> HeldRun:
    """Parse --run/--data/--runs-dir and load that run's holdout and fold models."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    args = p.parse_args()
    quiet_tensorflow()
    import keras

    rf = RunFiles(Path(args.runs_dir) / args.run)
    cfg = load_run_config(rf.root)
    split = run_split(DataFiles(Path(args.data), Path(args.runs_dir)), rf.root)
    rows = split.holdout
    # Uncompiled: predictions need only the weights, so runs of earlier versions load too.
    models = [keras.models.load_model(rf.fold(i).model, compile=False) for i in range(cfg.folds)]
    return HeldRun(args.run, rf, cfg, rows, split.x[rows], split.y[rows], models)
