"""The ensemble, behind the `predict` and `blend` commands: average the softmax outputs of a
run's refit members (or, without members, its fold models) on test.csv and write the
submission; score the ensemble on the run's held-out rows; blend finished runs.

Writes `runs/<run>/test_probs.npy`, `holdout_probs.npy` (with a holdout), `prediction.json`,
`submissions/<run>.csv` and `submissions/submission.csv`.

    python -m pipeline predict --run cpu
    python -m pipeline blend cpu-1 cpu-2 --name cpu-x2
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Paths
from pipeline.console import Log
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import HOLDOUT, holdout_rows, same_split
from pipeline.data.submission import read_sample_ids, write_submission
from pipeline.errors import UserError
from pipeline.files import load_npy, read_json, run_lock, save_npy, write_json
from pipeline.prediction.evaluate import accuracy, score
from pipeline.prediction.inference import average_probs, ensemble_models
from pipeline.prediction.metricsfile import holdout_text, record_holdout
from pipeline.runfiles import RunFiles, load_run_config, read_split, run_split


def predict_run(paths: Paths, run: str, tta: bool | None = None, log: Log = print,
                latest: bool = True) -> Path:
    """Ensemble a finished run's models on test.csv and write its submission files
    (`latest=False`: not submissions/submission.csv, which stays the last real run's)."""
    rf = RunFiles(paths.run_dir(run))
    cfg = load_run_config(rf.root)
    use_tta = cfg.tta if tta is None else tta
    x = DataFiles.of(paths).unlabelled()
    ids = _submission_ids(paths, len(x))
    with run_lock(rf.root, log):
        t0 = time.time()
        models = ensemble_models(rf.root, cfg)
        probs = average_probs(models, x, tta=use_tta, source=f"run '{run}'")
        seconds = time.time() - t0
        holdout = score_holdout(paths, run, models, use_tta)
        per_run = write_run_submission(paths, run, probs, ids, {
            "tta": use_tta, "models": len(models), "planned": cfg.refit or cfg.folds,
            "seconds": round(seconds, 2)}, latest=latest)
    log(f"{rf.ensemble_text(cfg)}{' × 5 TTA views' if use_tta else ''} on {len(x)} test "
        f"images in {seconds:.1f}s → " + (f"{paths.submissions / 'submission.csv'} (copy: {per_run})"
                                          if latest else str(per_run)))
    if holdout:
        log(holdout_line(holdout))
    return per_run


def _submission_ids(paths: Paths, rows: int) -> np.ndarray:
    """The ImageIds a submission for `rows` test images must have (sample_submission.csv's)."""
    ids = read_sample_ids(paths.data)
    if ids is None:
        return np.arange(1, rows + 1)
    if len(ids) != rows:
        raise UserError(f"{DataFiles(paths.data).sample_submission}: {len(ids)} rows but test.csv "
                        f"has {rows}; download the competition files again")
    return ids


def run_submission(paths: Paths, run: str) -> Path:
    """`submissions/<run>.csv`: the submission of run `run` (submission.csv is the latest one's)."""
    return paths.submissions / f"{run}.csv"


def write_run_submission(paths: Paths, run: str, probs: np.ndarray, ids: np.ndarray,
                         info: dict[str, Any], latest: bool = True) -> Path:
    """A run's test probabilities, its submission (and the copy submissions/submission.csv) and
    prediction.json; every submission the pipeline writes goes through here."""
    rf = RunFiles(paths.run_dir(run))
    if len(probs) != len(ids):
        raise UserError(f"run '{run}': {len(probs)} test predictions but the submission needs "
                        f"{len(ids)} rows; predict the runs again on the same test.csv")
    save_npy(rf.test_probs, probs.astype(np.float32))
    labels = probs.argmax(1)
    per_run = run_submission(paths, run)
    df = write_submission(per_run, labels, ids)
    if latest:
        write_submission(paths.submissions / "submission.csv", labels, ids)
    write_json(rf.prediction, {"submission": str(per_run), "rows": len(df), **info,
                               "label_counts": np.bincount(labels, minlength=10).tolist()})
    return per_run


def score_holdout(paths: Paths, run: str, models: list[Any], tta: bool) -> dict[str, Any] | None:
    """Score the fold ensemble on the run's held-out rows (none: None); saved in metrics.json."""
    rf = RunFiles(paths.run_dir(run))
    split = run_split(DataFiles.of(paths), rf.root)
    rows = split.holdout
    if not len(rows):
        return None
    probs = average_probs(models, split.x[rows], tta=tta, source=f"run '{run}'")
    save_npy(rf.holdout_probs, probs)
    result = {**score(split.y[rows], probs), "share": load_run_config(rf.root).holdout, "tta": tta,
              "models": len(models)}
    record_holdout(rf, result)
    return result


def holdout_line(h: dict[str, Any]) -> str:
    """The ensemble's holdout estimate as `predict` and `blend` print it."""
    return (f"holdout estimate of the ensemble: {holdout_text(h)}; conservative: its models "
            "trained without these train.csv rows")


def blend_runs(paths: Paths, runs: list[str], name: str, log: Log = print) -> Path:
    """Average the OOF, holdout and test probabilities of finished runs trained on the same split."""
    if len(runs) < 2:
        raise UserError("blend: name at least two runs, e.g. `blend full-1 full-2`")
    if name in runs:
        raise UserError(f"blend: --name {name!r} is one of the blended runs; choose another name")
    files = [RunFiles(paths.run_dir(r)) for r in runs]
    for rf in files:
        if not (rf.folds.is_file() and rf.metrics.is_file()):
            raise UserError(f"blend: run '{rf.name}' is not finished; train it first")
    splits = [read_split(rf.root) for rf in files]
    for rf, split in zip(files, splits):
        if not same_split(split, splits[0]):
            raise UserError(f"blend: run '{rf.name}' used other folds than '{runs[0]}' (different "
                            "data, folds, seed or holdout); only runs on the same split can be "
                            "blended honestly")
    for rf in files:
        if not rf.test_probs.is_file() or (np.any(splits[0] == HOLDOUT)
                                           and not rf.holdout_probs.is_file()):
            predict_run(paths, rf.name, log=log)
    data = DataFiles.of(paths)
    _, y = data.labelled()
    if len(splits[0]) != len(y):
        raise UserError(f"blend: the runs were trained on other data than {data.train}")
    rows = np.flatnonzero(splits[0] != HOLDOUT)
    oofs = [load_npy(rf.oof) for rf in files]
    oof = np.mean(oofs, axis=0)
    test = np.mean([load_npy(rf.test_probs) for rf in files], axis=0)
    each = {rf.name: accuracy(o[rows], y[rows]) for rf, o in zip(files, oofs)}
    acc = accuracy(oof[rows], y[rows])
    out = RunFiles(paths.run_dir(name))
    with run_lock(out.root, log):
        save_npy(out.oof, oof.astype(np.float32))
        save_npy(out.folds, splits[0])
        record: dict[str, Any] = {"runs": runs, "run_oof_accuracy": each, "cv_accuracy": acc}
        held = holdout_rows(splits[0])
        if len(held):
            probs = np.mean([load_npy(rf.holdout_probs) for rf in files], axis=0)
            save_npy(out.holdout_probs, probs.astype(np.float32))
            record["holdout"] = {**score(y[held], probs), "share": load_run_config(files[0].root).holdout}
            record["run_holdout_accuracy"] = {rf.name: read_json(rf.metrics)["holdout"]["accuracy"]
                                              for rf in files}
        sub = write_run_submission(paths, name, test, _submission_ids(paths, len(test)),
                                   {"blend_of": runs})
        write_json(out.blend, {**record, "submission": str(sub)})
    for r, a in each.items():
        log(f"  {r:<24} OOF accuracy {a:.4f}"
            + (f"  holdout {record['run_holdout_accuracy'][r]:.4f}" if "holdout" in record else ""))
    log(f"blend of {len(runs)} runs: OOF accuracy {acc:.4f} → {paths.submissions / 'submission.csv'} "
        f"(copy: {sub})")
    if "holdout" in record:
        log(holdout_line(record["holdout"]))
    return sub
