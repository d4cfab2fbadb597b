"""Runs in the terminal: one run's summary (`report`) and runs side by side (`compare`).

Both read only what training, `predict` and `submit` saved in the run folders; `compare` also
pairs the ensembles of two runs scored on the same held-out rows (McNemar's exact test).

    python -m pipeline report --run demo     # rebuilds the page, then prints summary_text
    python -m pipeline compare demo cpu      # compare_text
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config, folds_text, keys_with
from pipeline.console import duration, table
from pipeline.data.datafiles import DataFiles
from pipeline.data.folds import holdout_rows, same_split
from pipeline.files import load_npy, read_json
from pipeline.kaggle.history import latest
from pipeline.prediction.evaluate import DIGITS, paired, paired_text, top_confusions
from pipeline.prediction.metricsfile import cv_interval, holdout_text
from pipeline.reporting.rundata import trained_data_dir
from pipeline.runfiles import (
    RunFiles,
    finished_metrics,
    load_run_config,
    read_optional,
    read_split,
    saved_config,
)
from pipeline.training.runmetrics import fold_table

# Config keys that say how a run was executed rather than what it learned; left out of `compare`.
HIDDEN_KEYS = keys_with("record", "prediction", "execution")


def kaggle_score(kaggle: dict[str, Any] | None) -> str:
    """The public score a run's Kaggle record holds, or what stands in for it."""
    if not kaggle:
        return "not submitted"
    if kaggle.get("status") == "ERROR":
        return "not scored (error)"
    score = kaggle.get("public_score")
    if score in (None, ""):
        return "pending"
    try:
        return f"{float(score):.5f}"
    except (TypeError, ValueError):
        return str(score)


def summary_text(run_dir: Path, metrics: dict[str, Any] | None = None) -> str:
    """A compact terminal summary of one run from its metrics.json."""
    rf = RunFiles(Path(run_dir))
    m = metrics or finished_metrics(rf.root)
    cfg = read_json(rf.config)
    lines = [f"run '{rf.name}' · profile {cfg.get('profile')} · model {cfg.get('model')} · "
             f"{folds_text(cfg)} · {m.get('n_train', '?')} images",
             fold_table(m)]
    ci = cv_interval(m)
    ci_text = f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""
    lines.append(f"CV accuracy {m['cv_accuracy']:.4f}{ci_text} · log loss {m['cv_log_loss']:.4f} · "
                 f"folds {m['fold_accuracy_mean']:.4f} ± {m['fold_accuracy_std']:.4f} · "
                 f"folds trained in {duration(m.get('train_seconds', 0))} (summed)")
    h = m.get("holdout")
    if h:
        lines.append(f"holdout estimate of the ensemble: {holdout_text(h)}")
    cr = m.get("classification_report")
    if cr:
        weakest = sorted(DIGITS, key=lambda d: cr[str(d)]["f1-score"])[:3]
        lines.append("weakest digits (F1): " + ", ".join(f"{d} {cr[str(d)]['f1-score']:.3f}"
                                                         for d in weakest))
        conf = top_confusions(m["confusion_matrix"])
        lines.append("most confused (true→pred): "
                     + (", ".join(f"{t}→{p} ×{c}" for t, p, c in conf) or "none"))
    else:
        lines.append("per-digit scores and confusions: not in metrics.json (trained before they "
                     "were recorded); the report page derives them")
    lines.append(f"ensemble: {rf.ensemble_text(load_run_config(rf.root))}")
    pred = read_optional(rf.prediction)
    lines.append(f"submission: {pred['submission']} ({pred['rows']} rows)" if pred else
                 f"submission: not predicted yet (make submission RUN={rf.name})")
    lines.append(f"Kaggle public score: {kaggle_score(latest(rf.kaggle))}")
    if rf.report.is_file():
        lines.append(f"report: {rf.report}")
    return "\n".join(lines)


def compare_rows(runs_dir: Path, runs: list[str]) -> pd.DataFrame:
    """One row per run: profile, model, the settings that differ, CV accuracy ± CI, the holdout
    estimate of its ensemble, time, Kaggle."""
    loaded = []
    for run in runs:
        rf = RunFiles(Path(runs_dir) / run)
        loaded.append((run, finished_metrics(rf.root), saved_config(rf.root),
                       latest(rf.kaggle)))
    keys = [f.name for f in fields(Config)]
    shown = {"profile", "model", "folds", "epochs", "precision"}
    differ = [k for k in keys if k not in shown | HIDDEN_KEYS
              and len({json.dumps(c.get(k)) for _, _, c, _ in loaded}) > 1]
    any_holdout = any("holdout" in m for _, m, _, _ in loaded)
    rows = []
    for run, m, cfg, kaggle in loaded:
        ci = cv_interval(m)
        h = m.get("holdout")
        rows.append({
            "run": run, "profile": cfg.get("profile"), "model": cfg.get("model"),
            "folds×epochs": f"{cfg.get('folds')}×{cfg.get('fold_epochs') or cfg.get('epochs')}",
            "ensemble": RunFiles(Path(runs_dir) / run).ensemble_text(
                load_run_config(Path(runs_dir) / run)),
            "precision": cfg["precision"],
            "settings that differ": " ".join(f"{k}={cfg.get(k) if cfg.get(k) != '' else 'none'}"
                                             for k in differ) or "-",
            "CV acc": f"{m['cv_accuracy']:.4f}",
            "95% CI": f"{ci[0]:.4f}–{ci[1]:.4f}" if ci else "-",
            **({"holdout acc": holdout_text(h) if h else
                ("(make submission)" if cfg.get("holdout") else "-")} if any_holdout else {}),
            "fold mean±std": f"{m['fold_accuracy_mean']:.4f}±{m['fold_accuracy_std']:.4f}",
            "train time": duration(m.get("train_seconds", 0)),
            "Kaggle": kaggle_score(kaggle),
        })
    return pd.DataFrame(rows)


def paired_holdout(runs_dir: Path, a: str, b: str) -> dict[str, Any] | None:
    """The paired comparison of two runs' ensembles on their shared holdout, or None when they
    were not scored on the same held-out rows."""
    fa, fb = RunFiles(Path(runs_dir) / a), RunFiles(Path(runs_dir) / b)
    if not (fa.holdout_probs.is_file() and fb.holdout_probs.is_file()):
        return None
    split_a, split_b = read_split(fa.root), read_split(fb.root)
    rows_a, rows_b = holdout_rows(split_a), holdout_rows(split_b)
    if not same_split(rows_a, rows_b):
        return None
    env = read_optional(fa.env) or {}
    _, y = DataFiles(trained_data_dir(env, None), Path(runs_dir)).labelled()
    if len(y) != len(split_a):
        return None
    return paired(y[rows_a], load_npy(fa.holdout_probs), load_npy(fb.holdout_probs))


def compare_text(runs_dir: Path, runs: list[str]) -> str:
    """`compare_rows` as an aligned text table, the best marked, and the paired comparison on a
    shared holdout of the best run's ensemble against each other run's."""
    df = compare_rows(runs_dir, runs)
    key = "holdout acc" if "holdout acc" in df and df["holdout acc"].str[0].str.isdigit().any() \
        else "CV acc"
    score = pd.to_numeric(df[key].str.split(" ").str[0], errors="coerce")
    best = int(score.idxmax())
    df.insert(0, "", ["*" if i == best else "" for i in df.index])
    lines = [table(df), f"* best {'holdout estimate' if key != 'CV acc' else 'CV accuracy'}; "
             "runs whose 95% CIs overlap are not reliably different"]
    for other in (r for i, r in enumerate(runs) if i != best):
        result = paired_holdout(runs_dir, runs[best], other)
        if result is not None:
            lines.append(paired_text(runs[best], other, result))
    return "\n".join(lines)
