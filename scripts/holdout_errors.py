"""Where a run's remaining holdout errors are: per digit, as (true → predicted) pairs, and how many
of them every fold model makes on its own (errors no averaging of these models can fix).

    python scripts/holdout_errors.py --run cpu-h [--data data] [--runs-dir runs] > out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.config import DATA_DIR, RUNS_DIR  # noqa: E402
from pipeline.data import load_train  # noqa: E402
from pipeline.folds import holdout_rows  # noqa: E402
from pipeline.predict import average_probs  # noqa: E402
from pipeline.console import quiet_tensorflow  # noqa: E402
from pipeline.runfiles import RunFiles, load_run_config, read_split  # noqa: E402


def main() -> int:
    """Print the analysis as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(DATA_DIR))
    p.add_argument("--runs-dir", default=str(RUNS_DIR))
    args = p.parse_args()
    quiet_tensorflow()
    rf = RunFiles(Path(args.runs_dir) / args.run)
    cfg = load_run_config(rf.root)
    x, y = load_train(Path(args.data) / "train.csv", cache_dir=Path(args.runs_dir) / "cache")
    rows = holdout_rows(read_split(rf.root, len(y)))
    ensemble = np.load(rf.holdout_probs).argmax(1)
    import keras

    # Uncompiled: predictions need only the weights, so runs of earlier versions load too.
    models = [keras.models.load_model(rf.fold(i).model, compile=False) for i in range(cfg.folds)]
    each = np.stack([average_probs([m], x[rows], tta=cfg.tta).argmax(1) for m in models])
    wrong = ensemble != y[rows]
    every = (each != y[rows]).all(0)
    print(json.dumps({
        "run": args.run, "n": int(len(rows)), "ensemble_errors": int(wrong.sum()),
        "fold_model_errors": [int(e) for e in (each != y[rows]).sum(1)],
        "errors_every_fold_model_makes": int((wrong & every).sum()),
        "errors_by_true_digit": dict(sorted(Counter(int(d) for d in y[rows][wrong]).items())),
        "confusions_true_to_pred": {f"{t}->{p}": c for (t, p), c in Counter(
            zip(y[rows][wrong].tolist(), ensemble[wrong].tolist())).most_common()},
        "train_csv_rows_wrong": [int(r) + 2 for r in rows[wrong]],  # spreadsheet numbering
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
