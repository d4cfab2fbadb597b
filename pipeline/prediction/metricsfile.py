"""A run's `metrics.json`, written here and nowhere else: training records the cross-validation
part with its statistics (the out-of-fold accuracy's exact 95% interval, per-digit scores,
confusion counts), `predict` adds the holdout estimate of the run's ensemble. `report`,
`compare` and `submit` only read it; for runs trained before a statistic was recorded they derive
it in memory (`with_oof_statistics`, `cv_interval`).

Also the one wording of the holdout estimate (`holdout_text`), wherever it is printed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.files import read_json, write_json
from pipeline.prediction.evaluate import CI_METHOD, confusion_counts, exact_ci, per_digit, score
from pipeline.runfiles import RunFiles

OOF_STATISTICS = ("cv_accuracy_ci95", "cv_accuracy_ci_method", "classification_report",
                  "confusion_matrix")


def oof_statistics(y: np.ndarray, oof: np.ndarray) -> dict[str, Any]:
    """The out-of-fold accuracy's exact 95% interval, per-digit scores and confusion counts."""
    pred = oof.argmax(1)
    s = score(y, oof)
    return {"cv_accuracy_ci95": s["ci95"], "cv_accuracy_ci_method": s["ci_method"],
            "classification_report": per_digit(y, pred),
            "confusion_matrix": confusion_counts(y, pred).tolist()}


def record_training(rf: RunFiles, metrics: dict[str, Any], y: np.ndarray, oof: np.ndarray,
                    retrained: bool) -> dict[str, Any]:
    """Write a trained run's metrics.json: `metrics` plus the statistics of its out-of-fold
    predictions `oof` on labels `y`; returns what was written.

    The holdout estimate of an earlier prediction is kept only if no model was `retrained`
    since (else it scored another ensemble)."""
    metrics = {**metrics, **oof_statistics(y, oof)}
    if not retrained and rf.metrics.is_file():
        prev = read_json(rf.metrics)
        if "holdout" in prev:
            metrics["holdout"] = prev["holdout"]
    write_json(rf.metrics, metrics)
    return metrics


def record_holdout(rf: RunFiles, holdout: dict[str, Any]) -> None:
    """Add the ensemble's holdout estimate to a trained run's metrics.json."""
    write_json(rf.metrics, {**read_json(rf.metrics), "holdout": holdout})


def with_oof_statistics(metrics: dict[str, Any], y: np.ndarray, oof: np.ndarray) -> dict[str, Any]:
    """`metrics` with its out-of-fold statistics derived from `oof` and `y` in memory when it
    lacks any (a run trained before training recorded them); the file is left as it is."""
    if all(key in metrics for key in OOF_STATISTICS):
        return metrics
    # Derived afresh, not merged: a report built before the interval was exact left a bootstrap
    # one under the same key.
    return {**metrics, **oof_statistics(y, oof)}


def cv_interval(metrics: dict[str, Any]) -> list[float] | None:
    """The out-of-fold accuracy's exact 95% interval: recorded, else derived from the accuracy
    and the row count; None when metrics.json holds neither."""
    if metrics.get("cv_accuracy_ci_method") == CI_METHOD:
        return metrics["cv_accuracy_ci95"]
    n = metrics.get("n_train")
    if not n or "cv_accuracy" not in metrics:
        return None
    return exact_ci(round(metrics["cv_accuracy"] * n), int(n))


def holdout_detail(h: dict[str, Any]) -> str:
    """The holdout estimate's errors, rows and interval, e.g. '23 errors on 6,300 held-out
    images, 95% CI 0.9945–0.9976'."""
    return (f"{h['errors']} errors on {h['n']:,} held-out images, "
            f"95% CI {h['ci95'][0]:.4f}–{h['ci95'][1]:.4f}")


def holdout_text(h: dict[str, Any]) -> str:
    """The holdout estimate as every command prints it: '0.9963 (23 errors on …, 95% CI …)'."""
    return f"{h['accuracy']:.4f} ({holdout_detail(h)})"
