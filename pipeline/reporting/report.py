"""The run's report page: its figures and a self-contained HTML page.

`build_report` draws every figure into `runs/<run>/figures/` and writes `runs/<run>/report.html`
(images embedded; opens from disk with no server or internet) from what training, `predict` and
`submit` recorded; it never writes metrics.json. `train`, `predict` and `demo` build it when
they finish; `pipeline.reporting.summary` prints the terminal summary.

The page is the Jinja2 template `report.html.j2` beside this file (styles in `report.css`),
autoescaped; this module only prepares its context of plain values (`page_context`).

    python -m pipeline report --run demo     # rebuild the report, print a summary
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PROFILES, Config, folds_text
from pipeline.console import Log, duration
from pipeline.data.datafiles import DataFiles
from pipeline.errors import UserError
from pipeline.files import run_lock, write_bytes, write_text
from pipeline.kaggle.records import rank_text
from pipeline.prediction.evaluate import DIGITS, top_confusions
from pipeline.prediction.metricsfile import holdout_detail
from pipeline.reporting import figures
from pipeline.reporting.rundata import RunData, load_run
from pipeline.reporting.summary import kaggle_score
from pipeline.tuning.plots import optuna_plots
from pipeline.tuning.storage import open_saved_study
from pipeline.tuning.studyfiles import StudyFiles

ERROR_GALLERY_SIZE = 24
TEMPLATE = "report.html.j2"  # beside this file, as is report.css which it includes


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
               "accuracy with its exact (Clopper-Pearson) 95% confidence interval. Differences "
               "between runs smaller than the interval are noise."),
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


# --- figures ---------------------------------------------------------------------------------

def build_figures(rd: RunData, out_dir: Path | None = None) -> dict[str, Path]:
    """Draw every figure the run's files allow (into its figures/ folder by default); name → PNG."""
    out = Path(out_dir) if out_dir is not None else rd.figures_dir
    out.mkdir(parents=True, exist_ok=True)
    seed = int(rd.config.get("seed", 0))
    metrics = rd.metrics
    pred_test = rd.test_probs.argmax(1) if rd.test_probs is not None else None
    png = {spec.name: out / f"{spec.name}.png" for spec in FIGURES}
    made: dict[str, Path] = {}
    made["learning_curves"] = figures.learning_curves(
        rd.histories, png["learning_curves"], [int(f.get("best_epoch", 0)) for f in metrics["folds"]])
    made["fold_accuracy"] = figures.fold_accuracy(
        [f["val_accuracy"] for f in metrics["folds"]], metrics["cv_accuracy"],
        metrics["cv_accuracy_ci95"], png["fold_accuracy"])
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
    files = StudyFiles.of(rd.runs_dir, rd.study)
    folder = files.root
    try:
        study = open_saved_study(files, rd.study)
    except UserError as exc:  # kept in a database: the plots `tune` saved are shown
        rd.notes.append(f"study '{rd.study}': {exc}")
        study = None
    except Exception as exc:  # a storage written by another Optuna version, a locked file, …
        rd.notes.append(f"study '{rd.study}': could not be opened ({type(exc).__name__}: {exc})")
        study = None
    made: dict[str, Path] = {}
    if study is not None:
        paths, skipped = optuna_plots(study, out_dir)
        made = {p.stem: p for p in paths}
        rd.notes.extend(f"tuning plot skipped — {why}" for why in skipped)
    elif folder.is_dir():
        for src in sorted(folder.glob("*.png")):
            stem = src.stem if src.stem.startswith("tuning_") else f"tuning_{src.stem}"
            dst = out_dir / f"{stem}.png"
            write_bytes(dst, src.read_bytes())
            made[stem] = dst
    if not made:
        rd.notes.append(f"study '{rd.study}': nothing found under {folder}")
    return made


def study_summary(rd: RunData) -> dict[str, Any] | None:
    """Trials, best value and best parameters of the run's study, if it can be opened."""
    if not rd.study:
        return None
    try:
        study = open_saved_study(StudyFiles.of(rd.runs_dir, rd.study), rd.study)
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
    """Draw the figures and write `runs/<run>/report.html`; returns its path."""
    rd = load_run(runs_dir, run, data)
    with run_lock(rd.run_dir):
        made = build_figures(rd)
        out = rd.files.report
        write_text(out, render_html(rd, made, study_summary(rd)))
    for note in rd.notes:
        log(f"report: {note}")
    log(f"report: {out} ({len(made)} figures) — open it in a browser")
    return out


def render_html(rd: RunData, made: dict[str, Path], study: dict[str, Any] | None) -> str:
    """The report page: one self-contained HTML string (PNGs inlined as base64)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template(TEMPLATE).render(page_context(rd, made, study))


def page_context(rd: RunData, made: dict[str, Path], study: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the template shows, as plain strings, numbers and lists (no markup)."""
    m, cfg = rd.metrics, rd.config
    ci = m["cv_accuracy_ci95"]
    specs = {s.name: s for s in FIGURES}
    by_section: dict[str, list[dict[str, str]]] = {key: [] for key, _ in SECTIONS}
    for name, path in made.items():
        if name in specs:
            by_section[specs[name].section].append(
                _figure(name, path, specs[name].title, specs[name].caption))
        else:
            title = name.removeprefix("tuning_").replace("_", " ").capitalize()
            by_section["tuning"].append(_figure(name, path, f"Tuning: {title}",
                                                TUNING_CAPTIONS.get(name, "Optuna plot.")))
    h = m.get("holdout")
    cards = [
        _card("CV accuracy (out-of-fold)", f"{m['cv_accuracy']:.4f}",
              f"95% CI {ci[0]:.4f}–{ci[1]:.4f} ({len(rd.y)} images)"),
        _card("Fold accuracy", f"{m['fold_accuracy_mean']:.4f}",
              f"± {m['fold_accuracy_std']:.4f} std over {len(m['folds'])} folds"),
        *([_card("Holdout estimate (ensemble)", f"{h['accuracy']:.4f}", holdout_detail(h))]
          if h else []),
        _card("CV log loss", f"{m['cv_log_loss']:.4f}", "lower is better"),
        _card("Kaggle public score", kaggle_score(rd.kaggle), _kaggle_when(rd.kaggle_history)),
        _card("Training time", duration(m.get("train_seconds", 0)),
              f"{folds_text(cfg)}, summed over folds "
              f"({cfg.get('workers', 1)} at a time)"),
    ]
    cr = m["classification_report"]
    class_rows = [[f"digit {d}", *_scores(cr[str(d)])] for d in DIGITS]
    class_rows += [[key, *_scores(cr[key])] for key in ("macro avg", "weighted avg")]
    idx = figures.mistakes(rd.y, rd.oof, ERROR_GALLERY_SIZE)
    second = figures.runner_up(rd.oof[idx]) if len(idx) else []
    mistake_rows = [[i + 2, int(rd.y[i]), int(rd.oof[i].argmax()), f"{rd.oof[i].max():.3f}",
                     f"{int(second[k])} ({rd.oof[i, second[k]]:.3f})",
                     int(rd.fold_of[i]) + 1 if rd.fold_of is not None else "?"]
                    for k, i in enumerate(idx)]
    env = rd.env
    env_rows = [[k, env[k]] for k in ("python", "tensorflow", "keras", "numpy", "platform",
                                      "cpu_count", "git_commit", "git_dirty", "data_dir")
                if k in env]
    env_rows += [[f"sha256 {name}", digest] for name, digest in env.get("data_sha256", {}).items()]
    return {
        "run": rd.name, "cv_accuracy": f"{m['cv_accuracy']:.4f}",
        "meta": {"profile": cfg.get("profile"), "model": cfg.get("model"), "folds": cfg.get("folds"),
                 "folds_text": folds_text(cfg), "images": len(rd.y),
                 "built": dt.datetime.now().astimezone().isoformat(timespec="seconds")},
        "sections": list(SECTIONS), "titles": dict(SECTIONS), "cards": cards, "figures": by_section,
        "training": {
            "header": ["fold", "val accuracy", "val loss", "best epoch", "epochs run", "time",
                       "train images (+ pseudo-labelled)" if cfg.get("pseudo_from") else
                       "train images", "val images"],
            "rows": _fold_rows(m),
            "fold_mean": f"{m['fold_accuracy_mean']:.4f}", "fold_std": f"{m['fold_accuracy_std']:.4f}",
            "ci": f"exact 95% CI {ci[0]:.4f}–{ci[1]:.4f}, Clopper-Pearson",
            "log_loss": f"{m['cv_log_loss']:.4f}"},
        "errors": {
            "confusions": ", ".join(f"{t} taken for {p} ({c}×)"
                                    for t, p, c in top_confusions(m["confusion_matrix"])) or "none",
            "class_rows": class_rows, "mistake_rows": mistake_rows},
        "test": {"prediction": _prediction_rows(rd.prediction), "kaggle": _kaggle_rows(rd.kaggle),
                 "kaggle_history": {"header": KAGGLE_HISTORY,
                                    "rows": _kaggle_history_rows(rd.kaggle_history)}},
        "data": {"train_images": len(rd.y), "train_csv": str(DataFiles(rd.data_dir).train),
                 "test_images": len(rd.test_x) if rd.test_x is not None else None},
        "tuning": {"study": rd.study, "folder": str(StudyFiles.of(rd.runs_dir, rd.study).root) if rd.study else "",
                   "rows": _study_rows(study)},
        "config": {"rows": _config_rows(cfg), "env_rows": env_rows, "notes": rd.notes},
        "footer": {"run_dir": str(rd.run_dir), "metrics": rd.files.metrics.name,
                   "folds_csv": rd.files.folds_csv.name, "figures": rd.files.figures.name},
    }


def _figure(name: str, path: Path, title: str, caption: str) -> dict[str, str]:
    """A figure for the page, its PNG inlined as a data: URL."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"name": name, "title": title, "caption": caption, "file": path.name,
            "src": f"data:image/png;base64,{data}"}


def _card(label: str, value: str, sub: str = "") -> dict[str, str]:
    return {"label": label, "value": value, "sub": sub}


def _scores(row: dict[str, Any]) -> list[Any]:
    """Precision, recall, F1 and support of one line of the classification report."""
    return [f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1-score']:.4f}",
            int(row["support"])]


def _prediction_rows(p: dict[str, Any] | None) -> list[list[Any]]:
    """What `predict` recorded (empty when the run was not predicted)."""
    if not p:
        return []
    return [["submission file", p.get("submission", "")], ["rows", p.get("rows", "")],
            ["models averaged", p.get("models", "")],
            ["test-time augmentation", "on" if p.get("tta") else "off"],
            ["prediction time", f"{p.get('seconds', 0):.1f}s"]]


def _kaggle_when(history: list[dict[str, Any]]) -> str:
    """The Kaggle card's second line: when the latest submission was sent and where it ranked, or
    how to submit."""
    if not history:
        return "make submit to get one"
    kaggle = history[-1]
    if kaggle.get("status") == "ERROR":
        return f"Kaggle: {kaggle.get('error') or 'no reason given'}"
    parts = [f"submitted {kaggle.get('submitted_at', '?')}"]
    if kaggle.get("leaderboard"):
        parts.append(f"public leaderboard {rank_text(kaggle['leaderboard'])}")
    if len(history) > 1:
        parts.append(f"latest of {len(history)} submissions")
    return "; ".join(parts)


def _kaggle_rows(kaggle: dict[str, Any] | None) -> list[list[Any]]:
    """What `submit` recorded of the latest submission (empty when the run was not submitted)."""
    if not kaggle:
        return []
    rows = [["Kaggle public score", kaggle_score(kaggle)]]
    if kaggle.get("leaderboard"):
        rows.append(["public leaderboard", rank_text(kaggle["leaderboard"])])
    return rows + [[key, kaggle[key]] for key in ("status", "error", "message", "ref", "competition",
                                                  "file", "sha256", "submitted_at", "scored_at")
                   if kaggle.get(key)]


KAGGLE_HISTORY = ["submitted", "ref", "file (sha256)", "message", "status", "public score",
                  "public leaderboard"]


def _kaggle_history_rows(history: list[dict[str, Any]]) -> list[list[Any]]:
    """Every submission of the run, newest first."""
    return [[e.get("submitted_at", "?"), e.get("ref", "?"),
             f"{Path(str(e.get('file', '?'))).name} ({str(e['sha256'])[:12]})" if e.get("sha256")
             else Path(str(e.get("file", "?"))).name,
             e.get("message", ""), e.get("status", "?"), kaggle_score(e), rank_text(e.get("leaderboard"))]
            for e in reversed(history)]


def _study_rows(study: dict[str, Any] | None) -> list[list[Any]] | None:
    """The study's summary as table rows (None when its storage could not be read)."""
    if study is None:
        return None
    rows = [["study", study["name"]], ["trials (complete)", f"{study['trials']} ({study['complete']})"]]
    if "best_value" in study:
        rows += [["best trial", study["best_trial"]],
                 [f"best value ({study['direction']})", f"{study['best_value']:.5g}"]]
        rows += [[f"best {k}", v] for k, v in study["best_params"].items()]
    return rows


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
