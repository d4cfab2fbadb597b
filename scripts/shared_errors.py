"""Where the errors left after ensembling are: finished holdout runs on the same held-out rows,
each row any of their ensembles gets wrong counted by how many runs miss it, and the rows every
run misses (errors that no blend of these runs can fix), with each run's answer.

Reads each run's `holdout_probs.npy` (written by `predict`); no model is loaded.

    python scripts/shared_errors.py --runs h-cpu h-full h-deep10f4 [--png out.png] > out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import Paths, project_root
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import holdout_rows
from pipeline.files import load_npy
from pipeline.prediction.evaluate import score
from pipeline.runfiles import RunFiles, read_split, run_split


def main(argv: list[str] | None = None) -> int:
    """Print the analysis as JSON (and draw the rows every run misses with --png)."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished runs trained with the same holdout")
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    p.add_argument("--png", type=Path, help="also draw the rows every run misses into this PNG")
    args = p.parse_args(argv)
    runs = Path(args.runs_dir)
    x, y, fold_of = run_split(DataFiles(Path(args.data), runs), runs / args.runs[0])
    rows, probs = holdout_rows(fold_of), {}
    for run in args.runs:
        rf = RunFiles(runs / run)
        if not np.array_equal(holdout_rows(read_split(rf.root, len(y))), rows):
            raise SystemExit(f"{run}: other held-out rows than {args.runs[0]}; they must share the holdout")
        if not rf.holdout_probs.is_file():
            raise SystemExit(f"{run}: no {rf.holdout_probs.name}; run `predict --run {run}` first")
        probs[run] = load_npy(rf.holdout_probs)
    yh = y[rows]
    wrong = np.stack([probs[r].argmax(1) != yh for r in args.runs])
    misses = wrong.sum(0)
    every = np.flatnonzero(misses == len(args.runs))
    blend = np.mean([probs[r] for r in args.runs], axis=0)
    out = {
        "runs": args.runs, "n": int(len(rows)),
        "ensemble_errors": {r: int(w.sum()) for r, w in zip(args.runs, wrong)},
        "rows_missed_by_k_runs": {str(k): int(np.sum(misses == k)) for k in range(1, len(args.runs) + 1)},
        "missed_by_any": int(np.sum(misses > 0)),
        "missed_by_every_run": int(len(every)),
        "all_runs_averaged": score(yh, blend),
        "every_run_misses_by_true_digit": dict(sorted(Counter(int(d) for d in yh[every]).items())),
        "every_run_misses": [
            {"train_csv_row": int(rows[i]) + 2, "label": int(yh[i]),  # spreadsheet numbering
             "predicted": {r: [int(probs[r][i].argmax()), round(float(probs[r][i].max()), 3)]
                           for r in args.runs},
             "probability_of_label_averaged": round(float(blend[i, yh[i]]), 3)}
            for i in every],
    }
    if args.png:
        from pipeline.reporting.figures import gallery

        labels = [f"true {int(yh[i])} → {int(blend[i].argmax())} ({blend[i].max():.2f})\n"
                  f"p(true) {blend[i, yh[i]]:.2f} · row {int(rows[i]) + 2}" for i in every]
        gallery([x[rows[i]] for i in every], labels, args.png,
                f"The {len(every)} held-out images all {len(args.runs)} ensembles get wrong "
                "(averaged prediction; row = train.csv row)")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
