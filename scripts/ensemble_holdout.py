"""Which models to average: finished holdout runs' fold models and refit members scored on the
held-out rows alone and in sub-ensembles (folds only, members only, all; and every run's models
together), each paired against a reference run's ensemble on the same rows.

Each model's holdout probabilities are made as `predict` makes them (TTA per the run's config)
and kept in `runs/<run>/holdout_by_model.npz`, so a second call loads no model.

    python scripts/ensemble_holdout.py --reference h-ref --runs h-bf h-bf-s1 > out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.config import Paths, project_root
from pipeline.console import quiet_tensorflow
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import holdout_rows
from pipeline.files import load_npy, save_npz
from pipeline.prediction.evaluate import paired, score
from pipeline.prediction.inference import load_fold_model
from pipeline.runfiles import RunFiles, load_run_config, read_split, run_split


def model_probs(rf: RunFiles, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's holdout probabilities by folder name (fold_0 …, member_0 …), cached."""
    from pipeline.prediction.inference import average_probs

    cfg = load_run_config(rf.root)
    cache = rf.root / "holdout_by_model.npz"
    have = dict(np.load(cache)) if cache.is_file() else {}
    files = [m.files for m in rf.models(cfg)]
    names = [ff.root.name for ff in files]
    if any(name not in have for name in names):
        for ff in files:
            if ff.root.name not in have:
                have[ff.root.name] = average_probs([load_fold_model(rf.root, ff)], x, tta=cfg.tta)
        save_npz(cache, **have)
    return {name: have[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    """Print the comparison as JSON."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="a finished holdout run, paired with each")
    p.add_argument("--runs", nargs="+", required=True, help="finished runs on the same holdout")
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    args = p.parse_args(argv)
    quiet_tensorflow()
    runs = Path(args.runs_dir)
    ref = RunFiles(runs / args.reference)
    x, y, fold_of = run_split(DataFiles(Path(args.data), runs), ref.root)
    rows = holdout_rows(fold_of)
    yh, ref_probs = y[rows], load_npy(ref.holdout_probs)

    def entry(probs: np.ndarray) -> dict:
        s = score(yh, probs)
        return {"errors": s["errors"], "accuracy": round(s["accuracy"], 5),
                "paired_with_reference": paired(yh, ref_probs, probs)}

    out: dict = {"reference": args.reference, "n": int(len(rows)),
                 "reference_errors": score(yh, ref_probs)["errors"], "runs": {}}
    everything: list[np.ndarray] = []
    for run in args.runs:
        rf = RunFiles(runs / run)
        if not np.array_equal(holdout_rows(read_split(rf.root, len(y))), rows):
            raise SystemExit(f"{run}: other held-out rows than {args.reference}")
        each = model_probs(rf, x[rows])
        folds = [v for k, v in each.items() if k.startswith("fold_")]
        members = [v for k, v in each.items() if k.startswith("member_")]
        everything += folds + members
        out["runs"][run] = {
            "models_alone": {k: score(yh, v)["errors"] for k, v in each.items()},
            "folds": entry(np.mean(folds, axis=0)),
            **({"members": entry(np.mean(members, axis=0)),
                "folds_and_members": entry(np.mean(folds + members, axis=0))} if members else {}),
        }
    if len(args.runs) > 1:
        out["all_runs_all_models"] = {"models": len(everything),
                                      **entry(np.mean(everything, axis=0))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
