"""Which test-time augmentation views pay at the ensemble level: a finished holdout run's fold
models scored on its held-out rows with several view sets, each paired against the run's own
(the image and its four one-pixel shifts). Inference only: no model is trained.

    python scripts/tta_views.py --run h-cpu [--data data] [--runs-dir runs] > out.json
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from holdout_run import load
from scipy import ndimage

from pipeline.prediction.evaluate import paired, score
from pipeline.prediction.inference import TTA_SHIFTS, shift


def affine(x: np.ndarray, degrees: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Images rotated by `degrees` and zoomed by `scale` about their centre (bilinear, zeros in)."""
    a = np.deg2rad(degrees)
    # affine_transform maps output coordinates to input ones: the inverse rotation and zoom.
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    c = np.array([13.5, 13.5])
    out = np.empty_like(x)
    for i, img in enumerate(x[..., 0].astype(np.float32)):
        warped = ndimage.affine_transform(img, m, offset=c - m @ c, order=1, cval=0.0)
        out[i, ..., 0] = np.clip(np.rint(warped), 0, 255)
    return out


# Each view: a name and a function of the images. View sets are unions of these names.
VIEWS = {
    **{f"shift{dy:+d}{dx:+d}": (lambda x, dy=dy, dx=dx: shift(x, dy, dx)) for dy, dx in TTA_SHIFTS},
    **{f"diag{dy:+d}{dx:+d}": (lambda x, dy=dy, dx=dx: shift(x, dy, dx))
       for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1))},
    **{f"rot{d:+d}": (lambda x, d=d: affine(x, degrees=d)) for d in (-10, -5, 5, 10)},
    **{f"zoom{s}": (lambda x, s=s: affine(x, scale=s)) for s in (0.9, 1.1)},
}
SHIFTS = [f"shift{dy:+d}{dx:+d}" for dy, dx in TTA_SHIFTS]
SETS = {
    "none": SHIFTS[:1],
    "shifts (the run's TTA)": SHIFTS,
    "shifts + diagonals": SHIFTS + [v for v in VIEWS if v.startswith("diag")],
    "shifts + rotations ±5°": SHIFTS + ["rot-5", "rot+5"],
    "shifts + rotations ±5°, ±10°": SHIFTS + [v for v in VIEWS if v.startswith("rot")],
    "shifts + zooms 0.9/1.1": SHIFTS + ["zoom0.9", "zoom1.1"],
    "identity + rotations ±5° + zooms": SHIFTS[:1] + ["rot-5", "rot+5", "zoom0.9", "zoom1.1"],
    "all": list(VIEWS),
}


def main() -> int:
    """Print the comparison as JSON."""
    run = load(__doc__.split("\n\n")[0])
    xh, yh, models = run.x, run.y, run.models
    t0 = time.time()
    probs = {}  # view → mean softmax of the fold models on that view
    for name, view in VIEWS.items():
        xv = view(xh)
        probs[name] = np.mean([m.predict(xv, batch_size=2048, verbose=0) for m in models], axis=0)
    base = np.mean([probs[v] for v in SETS["shifts (the run's TTA)"]], axis=0)
    results = {}
    for set_name, views in SETS.items():
        ens = np.mean([probs[v] for v in views], axis=0)
        s = score(yh, ens)
        results[set_name] = {"views": len(views), "errors": s["errors"], "accuracy": s["accuracy"],
                             "paired_vs_run_tta": paired(yh, base, ens)}
    per_view = {v: int(np.sum(pr.argmax(1) != yh)) for v, pr in probs.items()}
    print(json.dumps({"run": run.name, "models": len(models), "n": int(len(yh)),
                      "inference_s": round(time.time() - t0, 1),
                      "errors_per_single_view": per_view, "view_sets": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
