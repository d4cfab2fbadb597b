"""Inspecting a run: figures, metrics.json, report.html, `report`/`compare`, TensorBoard, notebook.

One `demo` run (profile tiny on the embedded sample) is trained per session and shared by every
test here; a second, shorter run with a tuning study and a Kaggle result serves `compare` and the
study/submission parts of the page. Everything goes through the CLI under pytest's tmp folders.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.conftest import call_cli

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"learning_curves", "fold_accuracy", "confusion_matrix", "per_class_metrics",
           "error_gallery", "oof_predictions", "confidence", "test_predictions",
           "test_least_confident", "class_distribution", "class_examples", "mean_images"}
TUNING_FIGURES = {"tuning_history", "tuning_importances", "tuning_parallel", "tuning_slice"}
# Shaped as `submit` wrote it before runs kept a history (the last submission alone), which is
# read as a history of one; test_kaggle.py makes a real history through the fake server.
KAGGLE = {"competition": "digit-recognizer", "ref": 41234567, "file": "submissions/short.csv",
          "message": "short run", "status": "COMPLETE", "public_score": "0.98917", "error": None,
          "submitted_at": "2025-06-01T10:00:00+00:00", "scored_at": "2025-06-01T10:00:41+00:00"}


@pytest.fixture(scope="session")
def tiny_run_pair(tiny_run: SimpleNamespace) -> SimpleNamespace:
    """A second run ('short', 2 epochs) that used an Optuna study and was submitted to Kaggle."""
    import optuna

    t = tiny_run
    call_cli("train", "--profile", "tiny", "--set", "epochs=2", "--run", "short", "--data",
             str(t.data), *t.flags)
    study_dir = t.runs / "tune" / "toy"
    study_dir.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{study_dir / 'study.db'}",
                                direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda tr: 0.99 - 0.01 * abs(np.log10(tr.suggest_float("learning_rate", 1e-4, 1e-2,
                                                                           log=True)) + 2.5)
                   - 0.005 * tr.suggest_float("dropout", 0.0, 0.5), n_trials=8)
    # The report reads only the study's name from config.json; taking hyperparameters from a
    # study is the tuning stage's job, so the name is set after training.
    run_dir = t.runs / "short"
    auto_report = (run_dir / "report.html").is_file()  # `train` builds it when it finishes
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "study": "toy"}))
    (run_dir / "kaggle_submission.json").write_text(json.dumps(KAGGLE))
    metrics_before = (run_dir / "metrics.json").read_bytes()
    report = call_cli("report", "--run", "short", *t.flags)
    return SimpleNamespace(runs=t.runs, flags=t.flags, demo=t.run_dir, short=run_dir,
                           study=study, report_stdout=report.stdout,
                           auto_report=auto_report, metrics_before=metrics_before)


def _train_labels(t: SimpleNamespace) -> np.ndarray:
    return pd.read_csv(t.data / "train.csv", usecols=["label"])["label"].to_numpy()


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


def test_demo_builds_every_figure_as_a_readable_non_blank_png(tiny_run: SimpleNamespace) -> None:
    figs = {p.stem: p for p in (tiny_run.run_dir / "figures").glob("*.png")}
    assert set(figs) == FIGURES
    for name, path in figs.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        gray = _pixels(path)
        h, w = gray.shape
        assert 300 <= w <= 1700 and 250 <= h <= 3000, (name, w, h)
        assert gray.std() > 10 and (gray < 250).mean() > 0.02, f"{name} looks blank"
    assert f"report: {tiny_run.run_dir / 'report.html'}" in tiny_run.stdout


def test_metrics_json_holds_the_exact_ci_and_per_class_report(tiny_run: SimpleNamespace) -> None:
    from scipy.stats import binomtest

    m = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    y = _train_labels(tiny_run)
    pred = np.load(tiny_run.run_dir / "oof_probs.npy").argmax(1)
    acc = float(np.mean(pred == y))
    assert m["cv_accuracy"] == pytest.approx(acc)
    lo, hi = m["cv_accuracy_ci95"]
    assert lo < acc < hi
    normal = 2 * 1.96 * np.sqrt(acc * (1 - acc) / len(y))  # the CI a binomial would give
    assert 0.6 * normal < hi - lo < 1.6 * normal
    # The one interval of the pipeline, the holdout estimate's: Clopper-Pearson (exact binomial).
    exact = binomtest(int(np.sum(pred == y)), len(y)).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((exact.low, exact.high))
    assert m["cv_accuracy_ci_method"] == "Clopper-Pearson (exact binomial)" and "bootstrap" not in m

    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (y, pred), 1)
    assert m["confusion_matrix"] == cm.tolist()
    cr = m["classification_report"]
    for d in range(10):
        assert cr[str(d)]["support"] == np.sum(y == d)
        assert cr[str(d)]["recall"] == pytest.approx(cm[d, d] / cm[d].sum())
        assert cr[str(d)]["precision"] == pytest.approx(cm[d, d] / max(1, cm[:, d].sum()))
    assert "kaggle" not in m and "report" not in m  # what train and predict measured, only
    folds = pd.read_csv(tiny_run.run_dir / "folds.csv")
    assert folds["val_accuracy"].tolist() == pytest.approx([f["val_accuracy"] for f in m["folds"]])


def test_a_run_trained_before_the_statistics_were_recorded_gets_them_when_read(
        tiny_run: SimpleNamespace, tmp_path: Path) -> None:
    """A metrics.json without the out-of-fold statistics (or with the bootstrap interval of a
    report built before it was exact): `compare`, the summary and the page derive them; the
    file stays as it is."""
    import shutil

    from pipeline.reporting.rundata import load_run
    from pipeline.reporting.summary import compare_rows, summary_text

    shutil.copytree(tiny_run.run_dir, tmp_path / "old")
    now = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    stats = ("cv_accuracy_ci95", "cv_accuracy_ci_method", "classification_report", "confusion_matrix")
    old = {**{k: v for k, v in now.items() if k not in stats}, "cv_accuracy_ci95": [0.5, 0.6]}
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(old))
    before = (tmp_path / "old" / "metrics.json").read_bytes()

    lo, hi = now["cv_accuracy_ci95"]
    assert compare_rows(tmp_path, ["old"])["95% CI"].tolist() == [f"{lo:.4f}–{hi:.4f}"]
    text = summary_text(tmp_path / "old")
    assert f"(95% CI {lo:.4f}–{hi:.4f})" in text and "not in metrics.json" in text
    rd = load_run(tmp_path, "old", tiny_run.data)
    assert {k: rd.metrics[k] for k in stats} == {k: now[k] for k in stats}
    assert (tmp_path / "old" / "metrics.json").read_bytes() == before


class _Page(HTMLParser):
    """Collects images, links and the text of each table cell of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        if tag in ("a", "link", "script"):
            self.links.append(a.get("href") or a.get("src") or "")
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> tuple[_Page, str]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    page.close()
    return page, text


def test_html_report_is_self_contained_and_shows_the_run(tiny_run: SimpleNamespace) -> None:
    page, text = _parse(tiny_run.run_dir / "report.html")
    shown = {img["data-figure"]: img["src"] for img in page.images}
    for png in (tiny_run.run_dir / "figures").glob("*.png"):
        src = shown.pop(png.name)
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    assert not shown
    assert all(link.startswith("#") for link in page.links), page.links  # no server, no internet
    assert "http://" not in text and "https://" not in text

    m = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    for f in m["folds"]:
        assert [str(f["fold"]), f"{f['val_accuracy']:.4f}", f"{f['val_loss']:.4f}",
                str(f["best_epoch"])] in [row[:4] for row in page.rows]
    lo, hi = m["cv_accuracy_ci95"]
    assert f"{m['cv_accuracy']:.4f}" in text and f"{lo:.4f}–{hi:.4f}" in text
    # A run with no study and no Kaggle submission still gets a complete page.
    assert "did not use a tuning study" in text and "Not submitted to Kaggle" in text
    assert ["rows", "540"] in page.rows  # the submission it wrote


def test_tensorboard_logs_per_fold_match_the_history(tiny_run: SimpleNamespace) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    for fold in (0, 1):
        fold_dir = tiny_run.run_dir / f"fold_{fold}"
        history = pd.read_csv(fold_dir / "history.csv")
        for split, column in (("train", "loss"), ("validation", "val_loss")):
            acc = EventAccumulator(str(fold_dir / "tb" / split), size_guidance={"tensors": 0})
            acc.Reload()
            events = acc.Tensors("epoch_loss")
            assert [e.step for e in events] == list(range(len(history)))
            logged = [float(make_ndarray(e.tensor_proto)) for e in events]
            assert logged == pytest.approx(history[column].tolist(), rel=1e-4)


def test_report_shows_the_study_and_the_kaggle_score(tiny_run_pair: SimpleNamespace) -> None:
    p = tiny_run_pair
    assert p.auto_report
    figs = {f.stem for f in (p.short / "figures").glob("*.png")}
    # `train` does not predict, so the test-set grids are absent until `predict` runs.
    assert figs == (FIGURES - {"test_predictions", "test_least_confident"}) | TUNING_FIGURES
    page, text = _parse(p.short / "report.html")
    assert "Not predicted yet" in text
    assert {img["data-figure"] for img in page.images} == {f"{n}.png" for n in figs}
    best = p.study.best_trial
    assert ["best trial", str(best.number)] in page.rows
    assert ["Kaggle public score", "0.98917"] in page.rows
    assert ["submitted_at", KAGGLE["submitted_at"]] in page.rows
    # The report reads metrics.json, never writes it: not even the Kaggle result it shows.
    assert (p.short / "metrics.json").read_bytes() == p.metrics_before
    # The terminal summary printed by `report`.
    out = p.report_stdout
    assert "run 'short' · profile tiny" in out and "Kaggle public score: 0.98917" in out
    m = json.loads((p.short / "metrics.json").read_text())
    lo, hi = m["cv_accuracy_ci95"]
    assert f"CV accuracy {m['cv_accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f})" in out


def test_a_study_kept_in_postgres_is_named_not_read_from_its_worker_logs(tmp_path: Path) -> None:
    """`tune --storage postgresql://… --workers 2` leaves worker logs, best_params.json and the
    plots in the study folder, and no study.db: a worker's log is no Optuna journal."""
    from pipeline.reporting.report import study_summary, tuning_figures

    folder = tmp_path / "runs" / "tune" / "pg"
    folder.mkdir(parents=True)
    for i in (0, 1):
        (folder / f"worker-{i}.log").write_text(f"worker {i} (pid 4{i}) on study 'pg'\n"
                                                f"trial {i}: val acc 0.9{i} in 12s · dropout 0.2\n")
    url = "postgresql://me:***@db.example/optuna"
    (folder / "best_params.json").write_text(json.dumps({"study": "pg", "storage": url,
                                                         "params": {"dropout": 0.2}}))
    (folder / "tuning_history.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    rd = SimpleNamespace(study="pg", runs_dir=tmp_path / "runs", notes=[])
    out = tmp_path / "figures"
    made = tuning_figures(rd, out)  # type: ignore[arg-type]
    assert made == {"tuning_history": out / "tuning_history.png"}
    assert rd.notes == [f"study 'pg': not opened: its trials are in {url} (its --storage), "
                        f"not in {folder}"]
    assert study_summary(rd) is None  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == [
        "best_params.json", "tuning_history.png", "worker-0.log", "worker-1.log"]


def test_compare_lists_runs_side_by_side(tiny_run_pair: SimpleNamespace) -> None:
    p = tiny_run_pair
    out = call_cli("compare", "demo", "short", *p.flags).stdout
    lines = out.splitlines()
    rows = {name: next(line for line in lines if f" {name} " in f" {line} ")
            for name in ("demo", "short")}
    for name, run_dir in (("demo", p.demo), ("short", p.short)):
        m = json.loads((run_dir / "metrics.json").read_text())
        lo, hi = m["cv_accuracy_ci95"]
        assert f"{m['cv_accuracy']:.4f}" in rows[name] and f"{lo:.4f}–{hi:.4f}" in rows[name]
    assert "2×4" in rows["demo"] and "2×2" in rows["short"]
    # The precision each run trained in, always shown (tiny pins float32).
    assert "precision" in lines[0].split() and all(" float32 " in row for row in rows.values())
    assert "study=toy" in rows["short"] and "0.98917" in rows["short"]
    assert "not submitted" in rows["demo"]


def test_report_and_compare_name_a_missing_run(tiny_run: SimpleNamespace) -> None:
    for args in (["report", "--run", "nosuch"], ["compare", "demo", "nosuch"]):
        proc = call_cli(*args, *tiny_run.flags, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "nosuch" in proc.stderr and "Traceback" not in proc.stderr


def test_exploration_notebook_executes(tiny_run: SimpleNamespace,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("DIGITS_RUNS_DIR", str(tiny_run.runs))
    monkeypatch.setenv("DIGITS_RUN", "demo")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    before = sorted(p.name for p in tiny_run.run_dir.rglob("*"))
    nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "run 'demo' · profile tiny" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES)
    assert sorted(p.name for p in tiny_run.run_dir.rglob("*")) == before  # it only reads the run
