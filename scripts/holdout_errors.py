"""Where a run's remaining holdout errors are: per digit, as (true → predicted) pairs, and how many
of them every fold model makes on its own (errors no averaging of these models can fix).

    python scripts/holdout_errors.py --run cpu-h [--data data] [--runs-dir runs] > out.json
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
from holdout_run import load

from pipeline.prediction.inference import average_probs


def main() -> int:
    """Print the analysis as JSON."""
    run = load(__doc__.split("\n\n")[0])
    rows, y = run.rows, run.y
    ensemble = np.load(run.files.holdout_probs).argmax(1)
    each = np.stack([average_probs([m], run.x, tta=run.cfg.tta).argmax(1) for m in run.models])
    wrong = ensemble != y
    every = (each != y).all(0)
    print(json.dumps({
        "run": run.name, "n": int(len(rows)), "ensemble_errors": int(wrong.sum()),
        "fold_model_errors": [int(e) for e in (each != y).sum(1)],
        "errors_every_fold_model_makes": int((wrong & every).sum()),
        "errors_by_true_digit": dict(sorted(Counter(int(d) for d in y[wrong]).items())),
        "confusions_true_to_pred": {f"{t}->{p}": c for (t, p), c in Counter(
            zip(y[wrong].tolist(), ensemble[wrong].tolist())).most_common()},
        "train_csv_rows_wrong": [int(r) + 2 for r in rows[wrong]],  # spreadsheet numbering
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
