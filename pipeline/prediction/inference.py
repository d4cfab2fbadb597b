"""Fold models at work: load a finished run's models, and average their softmax over models and
test-time augmentation views.

A model is loaded only while its file still matches the checksum training recorded. Used for
out-of-fold predictions (`train`), the test and holdout predictions of the ensemble (`predict`)
and the teacher's labels (pseudo-labelling), so all of them are made the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.runfiles import FoldFiles, RunFiles, fold_intact, train_command

# Test-time augmentation views: the image and four one-pixel shifts.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def load_fold_model(run_dir: Path, fold: int | FoldFiles) -> Any:
    """Load one finished fold's (or member's) model, refusing a file that no longer matches
    its checksum."""
    from pipeline.modeling.model import load_model

    rf = RunFiles(Path(run_dir))
    path = (rf.fold(fold) if isinstance(fold, int) else fold).model
    retrain = f"run {train_command(rf.name)} to retrain it"
    # A damaged model may still load and predict garbage: trust only what training recorded.
    if not fold_intact(path.parent):
        raise UserError(f"{path}: does not match the checksum recorded when it was trained; {retrain}")
    try:
        return load_model(path)
    except Exception as exc:  # Keras raises many types for bad or unsafe files
        text = str(exc).strip()
        why = ("it holds Python code, which Keras safe_mode refuses to run" if "safe_mode" in text
               else text.splitlines()[0][:160] if text else type(exc).__name__)
        raise UserError(f"{path}: cannot load ({why}); {retrain}") from None


def ensemble_models(run_dir: Path, cfg: Config) -> list[Any]:
    """Load every model of a finished run's ensemble (RunFiles.ensemble: its refit members, or
    without them its fold models)."""
    rf = RunFiles(Path(run_dir))
    files = [m.files for m in rf.ensemble(cfg)]
    missing = [ff.root.name for ff in files if not ff.model.is_file()]
    if missing or not rf.metrics.is_file():
        what = ", ".join(missing) or f"no {rf.metrics.name}"
        raise UserError(f"run '{rf.name}' is not finished ({what} missing); run "
                        f"{train_command(rf.name)} to complete it")
    return [load_fold_model(rf.root, ff) for ff in files]


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved by (dy, dx) pixels with zeros shifted in (no wrap-around)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def average_probs(models: list[Any], x: np.ndarray, tta: bool = False,
                  batch_size: int = 2048, source: str = "the models") -> np.ndarray:
    """Mean softmax of all models (and TTA views) on `x`, as float32 (N, 10); a UserError naming
    `source` if any is not finite (NaN weights), so no such prediction is ever written."""
    views = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    total = np.zeros((len(x), 10), dtype=np.float64)
    for model in models:
        for dy, dx in views:
            total += np.asarray(model.predict(shift(x, dy, dx), batch_size=batch_size, verbose=0))
    if not np.all(np.isfinite(total)):
        raise UserError(f"{source}: predictions are NaN or infinite (the weights are not finite); "
                        "nothing was written — retrain, e.g. in a new run with "
                        "--set precision=float32 or a lower --set learning_rate")
    return (total / (len(models) * len(views))).astype(np.float32)
