"""Predictions of fold models: the mean softmax over models and test-time augmentation views.

Used for out-of-fold predictions (`train`), the test and holdout predictions of the ensemble
(`predict`) and the teacher's labels (pseudo-labelling), so all of them are made the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import UserError

# Test-time augmentation views: the image and four one-pixel shifts.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


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
