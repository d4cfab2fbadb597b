"""Inspect a finished run: figures, richer metrics, a self-contained HTML page, terminal tables.

`build_report` draws every figure into `runs/<run>/figures/`, adds the out-of-fold accuracy's
bootstrap 95% CI, the per-class report, the confusion matrix and the Kaggle result to
`runs/<run>/metrics.json`, and writes `runs/<run>/report.html` (images embedded; opens from
disk with no server or internet). `train`, `predict` and `demo` build it when they finish.

    python -m pipeline report --run demo     # rebuild the report, print a summary
    python -m pipeline compare demo cpu      # runs side by side
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import figures
from pipeline.config import DATA_DIR, PROFILES, Config, keys_with
from pipeline.console import Log, duration, table
from pipeline.evaluate import DIGITS, confusion_counts, paired, paired_text, per_digit, top_confusions
from pipeline.folds import holdout_rows, same_split
from pipeline.runfiles import RunFiles, finished_metrics, read_optional, read_split, saved_config
from pipeline.study import open_saved_study
from pipeline.runmetrics import fold_table
from pipeline.data import file_sha256, load_test, load_train
from pipeline.errors import UserError
from pipeline.folds import HOLDOUT
from pipeline.files import load_npy, read_json, run_lock, write_bytes, write_json, write_text


BOOTSTRAP_RESAMPLES = 2000
ERROR_GALLERY_SIZE = 24
KAGGLE_FILE = "kaggle_submission.json"
# Config keys that say how a run was executed rather than what it learned; left out of `compare`.
HIDDEN_KEYS = keys_with("record", "prediction", "execution")


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file stem, section, title and one-line caption."""

    name: str
    section: str
    title: str
    caption: str


FIGURES = (
    FigureSpec("learning_curves", "training", "Learning curves",
               "Loss (log scale) and accuracy per epoch, training vs validation. Top row: all folds "
               "overlaid and the learning-rate schedule; below, one row per fold, dotted line at "
               "the best epoch. A widening gap between the curves means overfitting."),
    FigureSpec("fold_accuracy", "training", "Fold accuracy",
               "Validation accuracy of each fold's model, their mean ± std, and the out-of-fold "
               "accuracy with its bootstrap 95% confidence interval. Differences between runs "
               "smaller than the interval are noise."),
    FigureSpec("confusion_matrix", "errors", "Confusion matrix",
               "Out-of-fold predictions for every training image. Left: counts (log colour "
               "scale); right: % of each true digit, red cells are the confusions to fix first."),
    FigureSpec("per_class_metrics", "errors", "Per-digit precision, recall and F1",
               "Which digits the model finds hard, from scikit-learn's classification report on "
               "the out-of-fold predictions."),
    FigureSpec("error_gallery", "errors", "Error gallery",
               "The most confident out-of-fold mistakes with the runner-up guess. Confident "
               "mistakes are often mislabelled or unreadable images: check the train.csv row."),
    FigureSpec("oof_predictions", "errors", "Actual vs predicted",
               "Random training images with their label and the out-of-fold prediction of the "
               "fold model that did not see them; mistakes in red."),
    FigureSpec("confidence", "confidence", "Confidence and calibration",
               "Left: how confident the right and the wrong predictions are. Right: accuracy "
               "against confidence; points on the diagonal mean the probabilities can be trusted."),
    FigureSpec("test_predictions", "test", "Test predictions",
               "Random test images with the fold ensemble's label and confidence, as submitted "
               "(#ImageId); orange titles are below 90% confidence."),
    FigureSpec("test_least_confident", "test", "Least confident test predictions",
               "The test images the ensemble is least sure about, with its top two guesses: "
               "where the next point of accuracy is."),
    FigureSpec("class_distribution", "data", "Class distribution",
               "Training images per digit; with test predictions, the share of each digit in "
               "train labels vs test predictions (a large mismatch hints at a systematic error)."),
    FigureSpec("class_examples", "data", "Examples per digit",
               "Random training images of each digit."),
    FigureSpec("mean_images", "data", "Mean image per digit",
               "The average of all training images of each digit, and the pixel standard "
               "deviation: where handwriting varies."),
)
TUNING_CAPTIONS = {
    "tuning_history": "Objective value of each trial and the best so far.",
    "tuning_importances": "How much each hyperparameter explained the objective (fANOVA).",
    "tuning_parallel": "Each trial's hyperparameters as a line, coloured by objective value.",
}
SECTIONS = (
    ("training", "Training"),
    ("errors", "Where the model is wrong"),
    ("confidence", "How sure it is"),
    ("test", "Test predictions and submission"),
    ("data", "Data overview"),
    ("tuning", "Tuning"),
    ("config", "Run configuration and environment"),
)


@dataclass
class RunData:
    """Everything the report shows about one run, loaded through the pipeline's own files."""

    name: str
    run_dir: Path
    runs_dir: Path
    data_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]
    folds: pd.DataFrame
    histories: list[pd.DataFrame]
    x: np.ndarray
    y: np.ndarray
    oof: np.ndarray
    fold_of: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    prediction: dict[str, Any] | None = None
    kaggle: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def figures_dir(self) -> Path:
        """Where this run's PNGs go."""
        return self.run_dir / "figures"

    @property
    def study(self) -> str:
        """The Optuna study the run's config names ('' when none)."""
        return str(self.config.get("study") or "")


# --- loading ---------------------------------------------------------------------------------

def _data_dir(env: dict[str, Any], data: Path | None) -> Path:
    """The data a run was trained on: `data` if given, else the folder env.json recorded."""
    if data is not None:
        return Path(data)
    recorded = env.get("data_dir")
    if recorded and (Path(recorded) / "train.csv").is_file():
        return Path(recorded)
    return DATA_DIR


def load_run(runs_dir: Path, run: str, data: Path | None = None) -> RunData:
    """Load a finished run, its training data and (if predicted) its test predictions."""
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / run
    metrics = finished_metrics(run_dir)
    config = read_json(run_dir / "config.json")
    env = read_optional(run_dir / "env.json") or {}
    data_dir = _data_dir(env, data)
    train_csv = data_dir / "train.csv"
    expected = env.get("data_sha256", {}).get("train.csv")
    if expected and train_csv.is_file() and file_sha256(train_csv) != expected:
        raise UserError(f"{train_csv}: not the train.csv run '{run}' was trained on (checksum "
                        f"differs); pass --data with the folder it used ({env.get('data_dir')})")
    if not train_csv.is_file():
        raise UserError(f"{train_csv}: not found; the report needs the train.csv run '{run}' was "
                        "trained on: pass --data with its folder")
    x, y = load_train(train_csv, cache_dir=runs_dir / "cache")
    oof = load_npy(run_dir / "oof_probs.npy")
    if oof.shape != (len(y), 10):
        raise UserError(f"{run_dir / 'oof_probs.npy'}: {oof.shape[0]} rows but {train_csv} has "
                        f"{len(y)}; pass --data with the folder the run was trained on")
    n_folds = len(metrics["folds"])
    histories = []
    for i in range(n_folds):
        path = run_dir / f"fold_{i}" / "history.csv"
        histories.append(pd.read_csv(path) if path.is_file() else pd.DataFrame())
    folds_csv = run_dir / "folds.csv"
    folds = pd.read_csv(folds_csv) if folds_csv.is_file() else pd.DataFrame(metrics["folds"])
    fold_path = run_dir / "folds.npy"
    fold_of = read_split(run_dir, len(y)) if fold_path.is_file() else None
    if fold_of is not None and len(fold_of) == len(y) and (fold_of == HOLDOUT).any():
        # The OOF figures describe the rows that have out-of-fold predictions; the held-out
        # rows are scored by the ensemble instead (metrics.json "holdout").
        keep = fold_of != HOLDOUT
        x, y, oof, fold_of = x[keep], y[keep], oof[keep], fold_of[keep]
    rd = RunData(name=run, run_dir=run_dir, runs_dir=runs_dir, data_dir=data_dir, config=config,
                 metrics=metrics, env=env, folds=folds, histories=histories, x=x, y=y, oof=oof,
                 fold_of=fold_of if fold_of is not None and len(fold_of) == len(y) else None)

    probs_path = run_dir / "test_probs.npy"
    if probs_path.is_file():
        rd.prediction = read_optional(run_dir / "prediction.json")
        test_csv = data_dir / "test.csv"
        probs = load_npy(probs_path)
        if test_csv.is_file():
            test_x = load_test(test_csv, cache_dir=runs_dir / "cache")
            if len(test_x) == len(probs):
                rd.test_x, rd.test_probs = test_x, probs
            else:
                rd.notes.append(f"test figures skipped: {test_csv} has {len(test_x)} images but "
                                f"the run predicted {len(probs)}")
        else:
            rd.notes.append(f"test figures skipped: {test_csv} not found")
    rd.kaggle = read_optional(run_dir / KAGGLE_FILE)
    return rd


# --- numbers ---------------------------------------------------------------------------------

def bootstrap_ci(correct: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 vector (here: accuracy)."""
    values = np.asarray(correct, dtype=np.float32)
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # bounds memory to a few tens of MB on the full 42,000 rows
    means = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(values[idx].mean(1))
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def enrich_metrics(rd: RunData) -> dict[str, Any]:
    """The run's metrics plus CI, per-class report, confusion matrix and Kaggle result."""
    pred = rd.oof.argmax(1)
    seed = int(rd.config.get("seed", 0))
    metrics = dict(rd.metrics)
    metrics["cv_accuracy_ci95"] = list(bootstrap_ci(pred == rd.y, seed=seed))
    metrics["bootstrap"] = {"resamples": BOOTSTRAP_RESAMPLES, "seed": seed, "method": "percentile"}
    metrics["classification_report"] = per_digit(rd.y, pred)
    metrics["confusion_matrix"] = confusion_counts(rd.y, pred).tolist()
    if rd.kaggle is not None:
        metrics["kaggle"] = rd.kaggle
    return metrics


# --- figures ---------------------------------------------------------------------------------

def build_figures(rd: RunData, out_dir: Path | None = None) -> dict[str, Path]:
    """Draw every figure the run's files allow (into its figures/ folder by default); name → PNG."""
    out = Path(out_dir) if out_dir is not None else rd.figures_dir
    out.mkdir(parents=True, exist_ok=True)
    seed = int(rd.config.get("seed", 0))
    metrics = rd.metrics if "cv_accuracy_ci95" in rd.metrics else enrich_metrics(rd)
    ci = metrics["cv_accuracy_ci95"]
    pred_test = rd.test_probs.argmax(1) if rd.test_probs is not None else None
    png = {spec.name: out / f"{spec.name}.png" for spec in FIGURES}
    made: dict[str, Path] = {}
    made["learning_curves"] = figures.learning_curves(
        rd.histories, png["learning_curves"], [int(f.get("best_epoch", 0)) for f in rd.metrics["folds"]])
    made["fold_accuracy"] = figures.fold_accuracy(
        [f["val_accuracy"] for f in rd.metrics["folds"]], metrics["cv_accuracy"], ci,
        png["fold_accuracy"])
    made["confusion_matrix"] = figures.confusion_matrix(rd.y, rd.oof.argmax(1), png["confusion_matrix"])
    made["per_class_metrics"] = figures.per_class_metrics(metrics["classification_report"],
                                                          png["per_class_metrics"])
    made["error_gallery"] = figures.error_gallery(rd.x, rd.y, rd.oof, png["error_gallery"],
                                                  n=ERROR_GALLERY_SIZE)
    made["oof_predictions"] = figures.oof_predictions(rd.x, rd.y, rd.oof, png["oof_predictions"],
                                                      seed=seed)
    made["confidence"] = figures.confidence(rd.y, rd.oof, png["confidence"])
    if rd.test_x is not None and rd.test_probs is not None:
        made["test_predictions"] = figures.test_predictions(rd.test_x, rd.test_probs,
                                                            png["test_predictions"], seed=seed)
        made["test_least_confident"] = figures.test_least_confident(
            rd.test_x, rd.test_probs, png["test_least_confident"])
    made["class_distribution"] = figures.class_distribution(rd.y, png["class_distribution"], pred_test)
    made["class_examples"] = figures.class_examples(rd.x, rd.y, png["class_examples"], seed=seed)
    made["mean_images"] = figures.mean_images(rd.x, rd.y, png["mean_images"])
    made.update(tuning_figures(rd, out))
    # A figure from an earlier build that this one did not draw would be stale: remove it.
    for old in out.glob("*.png"):
        if old not in made.values():
            old.unlink(missing_ok=True)
    return made


def tuning_figures(rd: RunData, out_dir: Path) -> dict[str, Path]:
    """Optuna's plots for the run's study, drawn from its storage or copied from its PNGs."""
    if not rd.study:
        return {}
    study_dir = rd.runs_dir / "tune" / rd.study
    try:
        study = open_saved_study(study_dir, rd.study)
    except Exception as exc:  # a storage written by another Optuna version, a locked file, …
        rd.notes.append(f"study '{rd.study}': could not be opened ({type(exc).__name__}: {exc})")
        study = None
    made: dict[str, Path] = {}
    if study is not None:
        paths, skipped = figures.tuning(study, out_dir)
        made = {p.stem: p for p in paths}
        rd.notes.extend(f"tuning plot skipped — {why}" for why in skipped)
    elif study_dir.is_dir():
        for src in sorted(study_dir.glob("*.png")):
            stem = src.stem if src.stem.startswith("tuning_") else f"tuning_{src.stem}"
            dst = out_dir / f"{stem}.png"
            write_bytes(dst, src.read_bytes())
            made[stem] = dst
    if not made:
        rd.notes.append(f"study '{rd.study}': nothing found under {study_dir}")
    return made


def study_summary(rd: RunData) -> dict[str, Any] | None:
    """Trials, best value and best parameters of the run's study, if it can be opened."""
    if not rd.study:
        return None
    try:
        study = open_saved_study(rd.runs_dir / "tune" / rd.study, rd.study)
    except Exception:
        return None
    if study is None:
        return None
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"name": study.study_name, "trials": len(study.trials),
                           "complete": len(done)}
    if done and len(study.directions) == 1:
        best = study.best_trial
        out.update(direction=study.direction.name.lower(), best_trial=best.number,
                   best_value=best.value, best_params=best.params)
    return out


# --- the page --------------------------------------------------------------------------------

def build_report(runs_dir: Path, run: str, data: Path | None = None, log: Log = print) -> Path:
    """Draw the figures, enrich metrics.json and write `runs/<run>/report.html`; returns its path."""
    rd = load_run(runs_dir, run, data)
    with run_lock(rd.run_dir):
        rd.metrics = enrich_metrics(rd)
        made = build_figures(rd)
        rd.metrics["report"] = {
            "html": "report.html", "figures": [f"figures/{p.name}" for p in made.values()],
            "built": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        write_json(rd.run_dir / "metrics.json", rd.metrics)
        page = render_html(rd, made, study_summary(rd))
        out = rd.run_dir / "report.html"
        write_text(out, page)
    for note in rd.notes:
        log(f"report: {note}")
    log(f"report: {out} ({len(made)} figures) — open it in a browser")
    return out


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table of escaped cells (no header row when every header is empty)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _figure_html(name: str, path: Path, title: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{_e(name)}"><h3>{_e(title)}</h3>'
            f'<img src="data:image/png;base64,{data}" alt="{_e(title)}" data-figure="{_e(path.name)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div><div class="sub">{_e(sub)}</div></div>')


def _kaggle_score(kaggle: dict[str, Any] | None) -> str:
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


def _fold_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    return [[f["fold"], f"{f['val_accuracy']:.4f}", f"{f['val_loss']:.4f}", f.get("best_epoch", ""),
             f.get("epochs_run", ""), duration(f.get("seconds", 0)),
             # pseudo-labelled images a fold also trained on (pseudo_from), as "+N"
             f"{f.get('n_train', '')}" + (f" +{f['n_pseudo']}" if f.get("n_pseudo") else ""),
             f.get("n_val", "")] for f in metrics["folds"]]


def _config_rows(config: dict[str, Any]) -> list[list[Any]]:
    """Every config key, marking values that differ from the profile's defaults."""
    defaults = Config().to_dict()
    profile = PROFILES.get(str(config.get("profile")), {})
    rows = []
    for key, value in config.items():
        base = profile.get(key, defaults.get(key))
        note = "" if key == "profile" or value == base or key not in defaults else \
            f"changed (profile: {base!r})"
        rows.append([key, json.dumps(value), note])
    return rows


CSS = """
:root{--ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);
margin:0;background:#fff}
header{background:#24292f;color:#fff;padding:20px 32px}
header h1{margin:0 0 4px;font-size:24px}
header .meta{color:#c9d1d9;font-size:14px}
header code{background:rgba(255,255,255,.15);color:#fff;padding:0 6px;border-radius:4px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;
z-index:2;font-size:14px}
nav a{margin-right:16px;color:var(--accent);text-decoration:none}
main{max-width:1440px;margin:0 auto;padding:16px 32px 48px}
section{scroll-margin-top:48px} /* a nav link lands below the sticky nav, not under it */
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:170px;background:var(--bg)}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:22px;font-weight:600}
.card .sub{color:var(--muted);font-size:12px}
h2{border-bottom:1px solid var(--line);padding-bottom:6px;margin-top:40px}
h3{margin:24px 0 6px;font-size:17px}
figure{margin:0 0 28px}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:14px;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:14px}
th,td{border:1px solid var(--line);padding:4px 10px;text-align:right}
th{background:var(--bg)}
td:first-child,th:first-child{text-align:left}
table.kv td,table.kv th{text-align:left}
.note{color:var(--muted);font-style:italic}
code{background:var(--bg);padding:1px 5px;border-radius:4px;font-size:13px}
footer{color:var(--muted);font-size:13px;border-top:1px solid var(--line);margin-top:40px;padding-top:10px}
"""


def render_html(rd: RunData, made: dict[str, Path], study: dict[str, Any] | None) -> str:
    """The report page: one self-contained HTML string (PNGs inlined as base64)."""
    m, cfg = rd.metrics, rd.config
    ci = m["cv_accuracy_ci95"]
    built = m.get("report", {}).get("built", "")
    specs = {s.name: s for s in FIGURES}
    by_section: dict[str, list[str]] = {key: [] for key, _ in SECTIONS}
    for name, path in made.items():
        if name in specs:
            by_section[specs[name].section].append(
                _figure_html(name, path, specs[name].title, specs[name].caption))
        else:
            title = name.removeprefix("tuning_").replace("_", " ").capitalize()
            by_section["tuning"].append(_figure_html(name, path, f"Tuning: {title}",
                                                     TUNING_CAPTIONS.get(name, "Optuna plot.")))

    cards = "".join([
        _card("CV accuracy (out-of-fold)", f"{m['cv_accuracy']:.4f}",
              f"95% CI {ci[0]:.4f}–{ci[1]:.4f} ({len(rd.y)} images)"),
        _card("Fold accuracy", f"{m['fold_accuracy_mean']:.4f}",
              f"± {m['fold_accuracy_std']:.4f} std over {len(m['folds'])} folds"),
        *([_card("Holdout estimate (ensemble)", f"{h['accuracy']:.4f}",
                 f"{h['errors']} errors on {h['n']} held-out images, 95% CI "
                 f"{h['ci95'][0]:.4f}–{h['ci95'][1]:.4f}")] if (h := m.get("holdout")) else []),
        _card("CV log loss", f"{m['cv_log_loss']:.4f}", "lower is better"),
        _card("Kaggle public score", _kaggle_score(rd.kaggle), _kaggle_when(rd.kaggle)),
        _card("Training time", duration(m.get("train_seconds", 0)),
              f"{cfg.get('folds')} folds × {cfg.get('epochs')} epochs, summed over folds "
              f"({cfg.get('workers', 1)} at a time)"),
    ])

    cr = m["classification_report"]
    class_rows = [[f"digit {d}", f"{cr[str(d)]['precision']:.4f}", f"{cr[str(d)]['recall']:.4f}",
                   f"{cr[str(d)]['f1-score']:.4f}", int(cr[str(d)]["support"])]
                  for d in DIGITS]
    for key in ("macro avg", "weighted avg"):
        class_rows.append([key, f"{cr[key]['precision']:.4f}", f"{cr[key]['recall']:.4f}",
                           f"{cr[key]['f1-score']:.4f}", int(cr[key]["support"])])
    confusions = ", ".join(f"{t} taken for {p} ({c}×)" for t, p, c in top_confusions(m["confusion_matrix"]))

    idx = figures.mistakes(rd.y, rd.oof, ERROR_GALLERY_SIZE)
    second = figures.runner_up(rd.oof[idx]) if len(idx) else []
    error_rows = [[i + 2, int(rd.y[i]), int(rd.oof[i].argmax()), f"{rd.oof[i].max():.3f}",
                   f"{int(second[k])} ({rd.oof[i, second[k]]:.3f})",
                   int(rd.fold_of[i]) + 1 if rd.fold_of is not None else "?"]
                  for k, i in enumerate(idx)]

    parts: list[str] = []
    parts.append('<section id="training"><h2>Training</h2>')
    parts.append(_table(["fold", "val accuracy", "val loss", "best epoch", "epochs run", "time",
                         "train images (+ pseudo-labelled)" if cfg.get("pseudo_from") else
                         "train images", "val images"], _fold_rows(m), cls="folds"))
    parts.append(f"<p>Mean ± std fold accuracy <b>{m['fold_accuracy_mean']:.4f} ± "
                 f"{m['fold_accuracy_std']:.4f}</b>; out-of-fold accuracy <b>{m['cv_accuracy']:.4f}"
                 f"</b> (bootstrap 95% CI {ci[0]:.4f}–{ci[1]:.4f}, {BOOTSTRAP_RESAMPLES} resamples); "
                 f"log loss {m['cv_log_loss']:.4f}. TensorBoard logs: <code>make tensorboard "
                 f"RUN={_e(rd.name)}</code>.</p>")
    parts += by_section["training"]
    parts.append("</section>")

    parts.append('<section id="errors"><h2>Where the model is wrong</h2>')
    parts.append(f"<p>Most frequent confusions (true → predicted): {_e(confusions or 'none')}.</p>")
    for html_fig in by_section["errors"]:
        parts.append(html_fig)
        if 'id="fig-per_class_metrics"' in html_fig:
            parts.append(_table(["class", "precision", "recall", "F1", "images"], class_rows))
        if 'id="fig-error_gallery"' in html_fig:
            parts.append("<details><summary>The same mistakes as a table</summary>" + _table(
                ["train.csv row", "true", "predicted", "confidence", "runner-up", "fold"], error_rows)
                + "</details>")
    parts.append("</section>")

    parts.append('<section id="confidence"><h2>How sure it is</h2>')
    parts += by_section["confidence"]
    parts.append("</section>")

    parts.append('<section id="test"><h2>Test predictions and submission</h2>')
    parts.append(_submission_html(rd))
    parts += by_section["test"]
    parts.append("</section>")

    parts.append('<section id="data"><h2>Data overview</h2>')
    parts.append(f"<p>{len(rd.y)} training images from <code>{_e(rd.data_dir / 'train.csv')}</code>"
                 + (f", {len(rd.test_x)} test images" if rd.test_x is not None else "") + ".</p>")
    parts += by_section["data"]
    parts.append("</section>")

    parts.append('<section id="tuning"><h2>Tuning</h2>')
    parts.append(_tuning_html(rd, study))
    parts += by_section["tuning"]
    parts.append("</section>")

    parts.append('<section id="config"><h2>Run configuration and environment</h2>')
    parts.append(_table(["key", "value", ""], _config_rows(cfg), cls="kv"))
    env = rd.env
    env_rows = [[k, env[k]] for k in ("python", "tensorflow", "keras", "numpy", "platform",
                                      "cpu_count", "git_commit", "git_dirty", "data_dir")
                if k in env]
    env_rows += [[f"sha256 {name}", digest] for name, digest in env.get("data_sha256", {}).items()]
    parts.append(_table(["", ""], env_rows, cls="kv"))
    if rd.notes:
        parts.append("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in rd.notes) + "</ul>")
    parts.append("</section>")

    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS)
    head_meta = (f"profile <b>{_e(cfg.get('profile'))}</b> · model <b>{_e(cfg.get('model'))}</b> · "
                 f"{_e(cfg.get('folds'))} folds × {_e(cfg.get('epochs'))} epochs · "
                 f"{len(rd.y)} training images · built {_e(built)}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run {_e(rd.name)} — digits report</title>
<style>{CSS}</style></head>
<body>
<header><h1>Run <code>{_e(rd.name)}</code>: CV accuracy {m['cv_accuracy']:.4f}</h1>
<div class="meta">{head_meta}</div></header>
<nav>{nav}</nav>
<main>
<div class="cards">{cards}</div>
{''.join(parts)}
<footer>Generated by <code>python -m pipeline report --run {_e(rd.name)}</code> from
<code>{_e(rd.run_dir)}</code>. Numbers are in <code>metrics.json</code> and <code>folds.csv</code>
beside this file; figures in <code>figures/</code>.</footer>
</main></body></html>
"""


def _submission_html(rd: RunData) -> str:
    rows: list[list[Any]] = []
    if rd.prediction:
        p = rd.prediction
        rows += [["submission file", p.get("submission", "")], ["rows", p.get("rows", "")],
                 ["fold models averaged", p.get("models", "")],
                 ["test-time augmentation", "on" if p.get("tta") else "off"],
                 ["prediction time", f"{p.get('seconds', 0):.1f}s"]]
    else:
        return (f'<p class="note">Not predicted yet: <code>make submission RUN={_e(rd.name)}</code> '
                "writes the submission and adds test-set figures here.</p>"
                + _kaggle_html(rd.kaggle, rd.name))
    return _table(["", ""], rows, cls="kv") + _kaggle_html(rd.kaggle, rd.name)


def _kaggle_when(kaggle: dict[str, Any] | None) -> str:
    """The Kaggle card's second line: when it was submitted, or how to submit."""
    if not kaggle:
        return "make submit to get one"
    if kaggle.get("status") == "ERROR":
        return f"Kaggle: {kaggle.get('error') or 'no reason given'}"
    return f"submitted {kaggle.get('submitted_at', '?')}"


def _kaggle_html(kaggle: dict[str, Any] | None, run: str) -> str:
    if not kaggle:
        return (f'<p class="note">Not submitted to Kaggle: <code>make submit RUN={_e(run)}</code> '
                "uploads it and records the public score here.</p>")
    rows = [["Kaggle public score", _kaggle_score(kaggle)]]
    rows += [[key, kaggle[key]] for key in ("status", "error", "message", "ref", "competition",
                                            "submitted_at", "scored_at") if kaggle.get(key)]
    return "<h3>Kaggle</h3>" + _table(["", ""], rows, cls="kv")


def _tuning_html(rd: RunData, study: dict[str, Any] | None) -> str:
    if not rd.study:
        return ('<p class="note">This run did not use a tuning study (config key '
                "<code>study</code> is empty). <code>make tune</code> searches hyperparameters; "
                "train with <code>--set study=NAME</code> to use the best trial.</p>")
    if study is None:
        return (f"<p>Study <code>{_e(rd.study)}</code>: no readable Optuna storage under "
                f"<code>{_e(rd.runs_dir / 'tune' / rd.study)}</code>; showing any saved plots.</p>")
    rows = [["study", study["name"]], ["trials (complete)", f"{study['trials']} ({study['complete']})"]]
    if "best_value" in study:
        rows += [["best trial", study["best_trial"]],
                 [f"best value ({study['direction']})", f"{study['best_value']:.5g}"]]
        rows += [[f"best {k}", v] for k, v in study["best_params"].items()]
    return _table(["", ""], rows, cls="kv")


# --- terminal --------------------------------------------------------------------------------

def summary_text(run_dir: Path, metrics: dict[str, Any] | None = None) -> str:
    """A compact terminal summary of one run from its metrics.json."""
    m = metrics or finished_metrics(run_dir)
    cfg = read_json(run_dir / "config.json")
    lines = [f"run '{run_dir.name}' · profile {cfg.get('profile')} · model {cfg.get('model')} · "
             f"{cfg.get('folds')} folds × {cfg.get('epochs')} epochs · {m.get('n_train', '?')} images",
             fold_table(m)]
    ci = m.get("cv_accuracy_ci95")
    ci_text = f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""
    lines.append(f"CV accuracy {m['cv_accuracy']:.4f}{ci_text} · log loss {m['cv_log_loss']:.4f} · "
                 f"folds {m['fold_accuracy_mean']:.4f} ± {m['fold_accuracy_std']:.4f} · "
                 f"folds trained in {duration(m.get('train_seconds', 0))} (summed)")
    h = m.get("holdout")
    if h:
        lines.append(f"holdout estimate (fold ensemble): {h['accuracy']:.4f} · {h['errors']} errors on "
                     f"{h['n']} held-out images · 95% CI {h['ci95'][0]:.4f}–{h['ci95'][1]:.4f}")
    cr = m.get("classification_report")
    if cr:
        weakest = sorted(DIGITS, key=lambda d: cr[str(d)]["f1-score"])[:3]
        lines.append("weakest digits (F1): " + ", ".join(f"{d} {cr[str(d)]['f1-score']:.3f}"
                                                         for d in weakest))
    if m.get("confusion_matrix"):
        conf = top_confusions(m["confusion_matrix"])
        lines.append("most confused (true→pred): "
                     + (", ".join(f"{t}→{p} ×{c}" for t, p, c in conf) or "none"))
    pred = read_optional(run_dir / "prediction.json")
    lines.append(f"submission: {pred['submission']} ({pred['rows']} rows)" if pred else
                 f"submission: not predicted yet (make submission RUN={run_dir.name})")
    kaggle = read_optional(run_dir / KAGGLE_FILE)
    lines.append(f"Kaggle public score: {_kaggle_score(kaggle)}")
    if (run_dir / "report.html").is_file():
        lines.append(f"report: {run_dir / 'report.html'}")
    return "\n".join(lines)


def compare_rows(runs_dir: Path, runs: list[str]) -> pd.DataFrame:
    """One row per run: profile, model, the settings that differ, CV accuracy ± CI, the holdout
    estimate of its ensemble, time, Kaggle."""
    loaded = []
    for run in runs:
        run_dir = Path(runs_dir) / run
        loaded.append((run, finished_metrics(run_dir), saved_config(run_dir),
                       read_optional(run_dir / KAGGLE_FILE)))
    keys = [f.name for f in fields(Config)]
    shown = {"profile", "model", "folds", "epochs", "precision"}
    differ = [k for k in keys if k not in shown | HIDDEN_KEYS
              and len({json.dumps(c.get(k)) for _, _, c, _ in loaded}) > 1]
    any_holdout = any("holdout" in m for _, m, _, _ in loaded)
    rows = []
    for run, m, cfg, kaggle in loaded:
        ci = m.get("cv_accuracy_ci95")
        h = m.get("holdout")
        rows.append({
            "run": run, "profile": cfg.get("profile"), "model": cfg.get("model"),
            "folds×epochs": f"{cfg.get('folds')}×{cfg.get('epochs')}",
            "precision": cfg["precision"],
            "settings that differ": " ".join(f"{k}={cfg.get(k) if cfg.get(k) != '' else 'none'}"
                                             for k in differ) or "-",
            "CV acc": f"{m['cv_accuracy']:.4f}",
            "95% CI": f"{ci[0]:.4f}–{ci[1]:.4f}" if ci else "(make report)",
            **({"holdout acc": (f"{h['accuracy']:.4f} ({h['errors']} err, CI "
                                f"{h['ci95'][0]:.4f}–{h['ci95'][1]:.4f})") if h else
                ("(make submission)" if cfg.get("holdout") else "-")} if any_holdout else {}),
            "fold mean±std": f"{m['fold_accuracy_mean']:.4f}±{m['fold_accuracy_std']:.4f}",
            "train time": duration(m.get("train_seconds", 0)),
            "Kaggle": _kaggle_score(kaggle),
        })
    return pd.DataFrame(rows)


def paired_holdout(runs_dir: Path, a: str, b: str) -> dict[str, Any] | None:
    """The paired comparison of two runs' ensembles on their shared holdout, or None when they
    were not scored on the same held-out rows."""
    from pipeline.data import load_train

    fa, fb = RunFiles(Path(runs_dir) / a), RunFiles(Path(runs_dir) / b)
    if not (fa.holdout_probs.is_file() and fb.holdout_probs.is_file()):
        return None
    split_a, split_b = read_split(fa.root), read_split(fb.root)
    rows_a, rows_b = holdout_rows(split_a), holdout_rows(split_b)
    if not same_split(rows_a, rows_b):
        return None
    env = read_optional(fa.env) or {}
    _, y = load_train(_data_dir(env, None) / "train.csv", cache_dir=Path(runs_dir) / "cache")
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
