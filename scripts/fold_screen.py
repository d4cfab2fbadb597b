"""Screen a training change on one fold before paying for a whole run: fold k's model of each run
(trained with `train --max-folds`) scored on its own validation rows and on the held-out rows,
each paired against the same fold of a reference run on the same split.

Both row sets are unseen by a fold-k model, so together they give ~13,000 paired images on the
real data (a single model: a difference of fewer than ~10 errors is noise; the output says which).

    python scripts/fold_screen.py --reference h-cpu --runs s-ema s-beta [--fold 1] > out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.config import Paths, keys_with, project_root
from pipeline.console import quiet_tensorflow
from pipeline.data.datafiles import DataFiles
from pipeline.prediction.evaluate import paired, score
from pipeline.runfiles import RunFiles, load_run_config, run_split


def fold_probs(data: DataFiles, runs: Path, run: str, fold: int) -> dict:
    """Fold `fold` (0-based) of `run`: its config, split, validation rows and probabilities there
    (its saved OOF), and its probabilities on the held-out rows (made as `predict` makes them)."""
    import keras

    from pipeline.prediction.inference import average_probs

    rf = RunFiles(runs / run)
    cfg = load_run_config(rf.root)
    split = run_split(data, rf.root)
    held = split.holdout
    model = keras.models.load_model(rf.fold(fold).model, compile=False)
    metrics = json.loads(rf.fold(fold).metrics.read_text())
    return {"cfg": cfg.to_dict(), "split": split, "val_idx": np.load(rf.fold(fold).val_idx),
            "val": np.load(rf.fold(fold).oof), "held_idx": held,
            "held": average_probs([model], split.x[held], tta=cfg.tta), "seconds": metrics["seconds"]}


def main(argv: list[str] | None = None) -> int:
    """Print the screen as JSON."""
    defaults = Paths.under(project_root())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="the run each screened run is paired with")
    p.add_argument("--runs", nargs="+", required=True, help="runs with fold --fold trained")
    p.add_argument("--fold", type=int, default=1, help="the fold to compare (1-based)")
    p.add_argument("--data", default=str(defaults.data))
    p.add_argument("--runs-dir", default=str(defaults.runs))
    args = p.parse_args(argv)
    quiet_tensorflow()
    runs = Path(args.runs_dir)
    data = DataFiles(Path(args.data), runs)
    ref = fold_probs(data, runs, args.reference, args.fold - 1)
    y = ref["split"].y
    out: dict = {"reference": args.reference, "fold": args.fold,
                 "rows": {"validation": int(len(ref["val_idx"])), "holdout": int(len(ref["held_idx"]))},
                 "reference_errors": {"validation": score(y[ref["val_idx"]], ref["val"])["errors"],
                                      "holdout": score(y[ref["held_idx"]], ref["held"])["errors"]},
                 "reference_seconds": ref["seconds"], "runs": {}}
    for run in args.runs:
        r = fold_probs(data, runs, run, args.fold - 1)
        if not (np.array_equal(r["split"].fold_of, ref["split"].fold_of)
                and np.array_equal(r["val_idx"], ref["val_idx"])):
            raise SystemExit(f"{run}: another split than {args.reference}; a paired screen needs the same")
        rows = np.concatenate([ref["val_idx"], ref["held_idx"]])
        both = paired(y[rows], np.concatenate([ref["val"], ref["held"]]),
                      np.concatenate([r["val"], r["held"]]))
        changed = {k: v for k, v in r["cfg"].items()
                   if ref["cfg"].get(k) != v and k not in keys_with("execution")}
        out["runs"][run] = {
            "changed": changed, "seconds": r["seconds"],
            "errors": {"validation": score(y[r["val_idx"]], r["val"])["errors"],
                       "holdout": score(y[r["held_idx"]], r["held"])["errors"]},
            # a = the reference, b = this run, on validation + holdout rows together
            "paired_with_reference": both,
            "verdict": ("within the noise (p >= 0.05)" if both["mcnemar_p"] >= 0.05 else
                        "better" if both["only_b"] < both["only_a"] else "worse"),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
