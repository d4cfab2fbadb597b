"""A run's metrics: assembled from its finished folds and members into `metrics.json` (written
through `pipeline.prediction.metricsfile`) and `folds.csv` (out-of-fold predictions and their
scores, times), and shown as the per-fold table that `train` and `report` print."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.console import duration, table
from pipeline.data.folds import HOLDOUT
from pipeline.files import load_npy, save_npy, write_text
from pipeline.prediction.evaluate import fold_scores
from pipeline.prediction.metricsfile import record_training
from pipeline.runfiles import RunFiles


def summarize(rf: RunFiles, cfg: Config, y: np.ndarray, fold_of: np.ndarray,
              fold_meta: list[dict[str, Any]], wall: float, members: list[dict[str, Any]] = (),
              retrained: bool = True) -> dict[str, Any]:
    """Assemble out-of-fold probabilities and write the run's metrics.json and folds.csv
    (the holdout score of an earlier prediction is kept only if no model was `retrained`)."""
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
        "train_seconds": round(sum(m["seconds"] for m in (*fold_meta, *members)), 2),
        "wall_seconds_last_invocation": round(wall, 2),
        "folds": [{k: v for k, v in m.items() if k != "sha256"} for m in fold_meta],
        "members": [{k: v for k, v in m.items() if k != "sha256"} for m in members],
    }
    metrics = record_training(rf, metrics, y[rows], oof[rows], retrained)
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
    members = metrics.get("members", [])
    return "\n".join([
        fold_table(metrics),
        f"mean ± std fold accuracy: {metrics['fold_accuracy_mean']:.4f} ± "
        f"{metrics['fold_accuracy_std']:.4f}",
        f"CV (out-of-fold) accuracy: {metrics['cv_accuracy']:.4f}  log loss "
        f"{metrics['cv_log_loss']:.4f}"
        + (f"  + {len(members)} refit member(s) for the submission" if members else "")
        # Models train side by side, so their summed time is not the wall time.
        + f"  models trained {duration(metrics['train_seconds'])} summed "
        f"({duration(metrics['wall_seconds_last_invocation'])} wall this time)"])
