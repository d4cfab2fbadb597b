"""Fold ensemble: average the fold models' softmax outputs on test.csv and write the submission.

Writes `runs/<run>/test_probs.npy`, `submissions/<run>.csv` and `submissions/submission.csv`.

    python -m pipeline predict --run cpu
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.data import load_test, load_train
from pipeline.errors import UserError
from pipeline.evaluate import score
from pipeline.files import load_npy, read_json, run_lock, save_npy, write_json
from pipeline.folds import holdout_rows
from pipeline.submission import read_sample_ids, write_submission
from pipeline.config import Paths
from pipeline.train import fold_intact, load_run_config

Log = Callable[[str], None]

# Test-time augmentation views: the image and four one-pixel shifts.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved by (dy, dx) pixels with zeros shifted in (no wrap-around)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def average_probs(models: list, x: np.ndarray, tta: bool = False, batch_size: int = 2048) -> np.ndarray:
    """Mean softmax of all models (and TTA views) on `x`, as float32 (N, 10)."""
    views = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    total = np.zeros((len(x), 10), dtype=np.float64)
    for model in models:
        for dy, dx in views:
            total += model.predict(shift(x, dy, dx), batch_size=batch_size, verbose=0)
    return (total / (len(models) * len(views))).astype(np.float32)


def fold_models(run_dir: Path, folds: int) -> list:
    """Load every fold model of a finished run (Keras safe mode)."""
    missing = [i for i in range(folds) if not (run_dir / f"fold_{i}" / "model.keras").is_file()]
    if missing or not (run_dir / "metrics.json").is_file():
        raise UserError(f"run '{run_dir.name}' is not finished (fold(s) "
                        f"{', '.join(str(i + 1) for i in missing) or '?'} missing); "
                        f"run `python -m pipeline train --run {run_dir.name}` to complete it")
    return [load_fold_model(run_dir, i) for i in range(folds)]


def load_fold_model(run_dir: Path, fold: int):  # type: ignore[no-untyped-def]
    """Load one finished fold's model, refusing a file that no longer matches its checksum."""
    from pipeline.model import load_model

    path = run_dir / f"fold_{fold}" / "model.keras"
    retrain = f"run `python -m pipeline train --run {run_dir.name}` to retrain it"
    # A damaged model may still load and predict garbage: trust only what training recorded.
    if not fold_intact(path.parent):
        raise UserError(f"{path}: does not match the checksum recorded when it was trained; {retrain}")
    try:
        return load_model(str(path))
    except Exception as exc:  # Keras raises many types for bad or unsafe files
        text = str(exc).strip()
        why = ("it holds Python code, which Keras safe_mode refuses to run" if "safe_mode" in text
               else text.splitlines()[0][:160] if text else type(exc).__name__)
        raise UserError(f"{path}: cannot load ({why}); {retrain}") from None


def predict_run(paths: Paths, run: str, tta: bool | None = None, log: Log = print) -> Path:
    """Ensemble a finished run's fold models on test.csv and write its submission files."""
    run_dir = paths.run_dir(run)
    cfg = load_run_config(run_dir)
    use_tta = cfg.tta if tta is None else tta
    x = load_test(paths.data / "test.csv", cache_dir=paths.runs / "cache")
    ids = read_sample_ids(paths.data)
    if ids is None:
        ids = np.arange(1, len(x) + 1)
    elif len(ids) != len(x):
        raise UserError(f"{paths.data / 'sample_submission.csv'}: {len(ids)} rows but test.csv "
                        f"has {len(x)}; download the competition files again")
    with run_lock(run_dir, log):
        t0 = time.time()
        models = fold_models(run_dir, cfg.folds)
        probs = average_probs(models, x, tta=use_tta)
        seconds = time.time() - t0
        holdout = score_holdout(paths, run, models, use_tta)
        per_run = _write_outputs(paths, run, probs, ids, {"tta": use_tta, "models": len(models),
                                                          "seconds": round(seconds, 2)})
    log(f"{len(models)} fold models{' × 5 TTA views' if use_tta else ''} on {len(x)} test images in "
        f"{seconds:.1f}s → {paths.submissions / 'submission.csv'} (copy: {per_run})")
    if holdout:
        log(holdout_line(holdout))
    return per_run


def score_holdout(paths: Paths, run: str, models: list, tta: bool) -> dict | None:
    """Score the fold ensemble on the run's held-out rows (none: None); saved in metrics.json."""
    run_dir = paths.run_dir(run)
    rows = holdout_rows(load_npy(run_dir / "folds.npy"))
    if not len(rows):
        return None
    x, y = load_train(paths.data / "train.csv", cache_dir=paths.runs / "cache")
    if len(y) != len(load_npy(run_dir / "folds.npy")):
        raise UserError(f"{paths.data / 'train.csv'}: not the train.csv run '{run}' was trained on "
                        "(other row count); pass --data with the folder it used")
    probs = average_probs(models, x[rows], tta=tta)
    save_npy(run_dir / "holdout_probs.npy", probs)
    result = {**score(y[rows], probs), "share": load_run_config(run_dir).holdout, "tta": tta,
              "models": len(models)}
    metrics = read_json(run_dir / "metrics.json")
    write_json(run_dir / "metrics.json", {**metrics, "holdout": result})
    return result


def holdout_line(h: dict) -> str:
    """The holdout estimate as one console line."""
    return (f"holdout estimate: the ensemble scores {h['accuracy']:.4f} on {h['n']} held-out "
            f"train.csv images ({h['errors']} errors, 95% CI {h['ci95'][0]:.4f}–{h['ci95'][1]:.4f}); "
            "conservative: its models trained without them")


def _write_outputs(paths: Paths, run: str, probs: np.ndarray, ids: np.ndarray,
                   info: dict) -> Path:
    """The run's submission, its copy as submissions/submission.csv, and prediction.json."""
    run_dir = paths.run_dir(run)
    save_npy(run_dir / "test_probs.npy", probs)
    labels = probs.argmax(1)
    per_run = paths.submissions / f"{run}.csv"
    df = write_submission(per_run, labels, ids)
    write_submission(paths.submissions / "submission.csv", labels, ids)
    write_json(run_dir / "prediction.json", {
        "submission": str(per_run), "rows": len(df), **info,
        "label_counts": np.bincount(labels, minlength=10).tolist(),
    })
    return per_run


def blend_runs(paths: Paths, runs: list[str], name: str, log: Log = print) -> Path:
    """Average the OOF and test probabilities of finished runs trained on the same folds."""
    from pipeline.data import load_train
    from pipeline.files import load_npy

    if len(runs) < 2:
        raise UserError("blend: name at least two runs, e.g. `blend full-1 full-2`")
    folds = [load_npy(paths.run_dir(r) / "folds.npy") if (paths.run_dir(r) / "folds.npy").is_file()
             else None for r in runs]
    for r, f in zip(runs, folds):
        if f is None or not (paths.run_dir(r) / "metrics.json").is_file():
            raise UserError(f"blend: run '{r}' is not finished; train it first")
        if f.shape != folds[0].shape or not np.array_equal(f, folds[0]):
            raise UserError(f"blend: run '{r}' used other folds than '{runs[0]}' (different data, "
                            "folds or seed); only runs on the same folds can be blended honestly")
    for r in runs:
        if not (paths.run_dir(r) / "test_probs.npy").is_file():
            predict_run(paths, r, log=log)
    _, y = load_train(paths.data / "train.csv", cache_dir=paths.runs / "cache")
    oof = np.mean([load_npy(paths.run_dir(r) / "oof_probs.npy") for r in runs], axis=0)
    test = np.mean([load_npy(paths.run_dir(r) / "test_probs.npy") for r in runs], axis=0)
    if len(oof) != len(y):
        raise UserError(f"blend: the runs were trained on other data than {paths.data / 'train.csv'}")
    each = {r: float(np.mean(load_npy(paths.run_dir(r) / "oof_probs.npy").argmax(1) == y)) for r in runs}
    acc = float(np.mean(oof.argmax(1) == y))
    out = paths.run_dir(name)
    save_npy(out / "oof_probs.npy", oof.astype(np.float32))
    save_npy(out / "test_probs.npy", test.astype(np.float32))
    ids = read_sample_ids(paths.data)
    if ids is None:
        ids = np.arange(1, len(test) + 1)
    sub = paths.submissions / f"{name}.csv"
    write_submission(sub, test.argmax(1), ids)
    write_submission(paths.submissions / "submission.csv", test.argmax(1), ids)
    write_json(out / "blend.json", {"runs": runs, "run_oof_accuracy": each, "cv_accuracy": acc,
                                    "submission": str(sub)})
    for r, a in each.items():
        log(f"  {r:<24} OOF accuracy {a:.4f}")
    log(f"blend of {len(runs)} runs: OOF accuracy {acc:.4f} → {paths.submissions / 'submission.csv'} "
        f"(copy: {sub})")
    return sub
