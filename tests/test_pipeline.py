"""End to end on the embedded sample: train (tiny) → predict → submission, plus resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import call_cli, copy_demo, last_error_line

FOLD_FILES = {"model.keras", "history.csv", "metrics.json", "oof.npy", "val_idx.npy"}
RUN_FILES = {"config.json", "env.json", "folds.npy", "oof_probs.npy", "metrics.json", "folds.csv",
             "test_probs.npy", "prediction.json"}


@pytest.fixture(scope="module")
def tiny_pipeline(demo_once, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The session's `demo` run (profile tiny: trained, predicted, reported through the CLI in a
    real process), copied here; its folders and console output."""
    root = tmp_path_factory.mktemp("pipeline")
    t = copy_demo(demo_once, root)
    common = ["--data", str(t.data), "--runs-dir", str(t.runs)]  # what `train` takes
    return {"root": root, "run": t.run_dir, "subs": t.subs, "data": t.data, "common": common,
            "subs_flag": ["--submissions-dir", str(t.subs)], "out": t.stdout}


def test_run_folder_has_every_artifact(tiny_pipeline: dict) -> None:
    run = tiny_pipeline["run"]
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    for i in range(2):
        assert FOLD_FILES <= {p.name for p in (run / f"fold_{i}").iterdir()}
        assert not (run / f"fold_{i}" / "last.keras").exists()  # checkpoint removed when done
        hist = pd.read_csv(run / f"fold_{i}" / "history.csv")
        assert list(hist["epoch"]) == list(range(1, 5))
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(hist.columns)
    assert json.loads((run / "config.json").read_text())["profile"] == "tiny"
    assert "run 'demo': profile tiny" in tiny_pipeline["out"]
    env = json.loads((run / "env.json").read_text())
    assert env["tensorflow"] and len(env["data_sha256"]["train.csv"]) == 64


def test_cv_accuracy_is_the_oof_accuracy(tiny_pipeline: dict) -> None:
    run = tiny_pipeline["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    sample_dir = tiny_pipeline["data"]
    y = pd.read_csv(sample_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    oof = np.load(run / "oof_probs.npy")
    assert oof.shape == (len(y), 10) and np.allclose(oof.sum(1), 1, atol=1e-4)
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(oof.argmax(1) == y))
    assert metrics["cv_accuracy"] > 0.85
    folds = np.load(run / "folds.npy")
    for m in metrics["folds"]:
        idx = np.flatnonzero(folds == m["fold"] - 1)
        assert m["val_accuracy"] == pytest.approx(np.mean(oof[idx].argmax(1) == y[idx]))
    table = pd.read_csv(run / "folds.csv")
    assert list(table["fold"]) == [1, 2]
    assert "CV (out-of-fold) accuracy" in tiny_pipeline["out"]
    assert "fold 2/2 epoch  4/4" in tiny_pipeline["out"] and "ETA" in tiny_pipeline["out"]


def test_submission_is_valid_and_accurate(tiny_pipeline: dict) -> None:
    sub = pd.read_csv(tiny_pipeline["subs"] / "demo.csv")
    assert list(sub.columns) == ["ImageId", "Label"]
    assert list(sub["ImageId"]) == list(range(1, 541))
    assert sub["Label"].between(0, 9).all()
    truth = pd.read_csv(tiny_pipeline["data"] / "test_labels.csv")["Label"].to_numpy()
    assert np.mean(sub["Label"].to_numpy() == truth) >= 0.85
    probs = np.load(tiny_pipeline["run"] / "test_probs.npy")
    assert np.array_equal(probs.argmax(1), sub["Label"].to_numpy())


def test_demo_leaves_submission_csv_alone_and_is_never_taken_unnamed(demo_once,
                                                                    tmp_path: Path) -> None:
    """`demo` after a real run: the real submissions/submission.csv stays, and commands given
    no run do not take the demo's (it learnt the embedded sample, not the competition)."""
    t = copy_demo(demo_once, tmp_path)
    assert (t.subs / "demo.csv").is_file() and not (t.subs / "submission.csv").exists()
    data, runs = ["--data", str(t.data)], ["--runs-dir", str(t.runs)]
    subs = ["--submissions-dir", str(t.subs)]
    for command in (["predict", "--no-report", *data, *runs, *subs],
                    ["submit", "--dry-run", *data, *runs, *subs], ["report", *runs]):
        proc = call_cli(*command, check=False)
        assert proc.returncode == 2, proc.stdout[-2000:]
        assert proc.stderr.strip() == (
            f"error: {t.runs}: no trained run found (demo runs are taken only when named: --run "
            "demo, or RUN=demo for make); train one with `make train`")
    assert sorted(p.name for p in t.subs.iterdir()) == ["demo.csv"]


def test_demo_never_writes_into_data_it_did_not_make(sample_dir: Path, tmp_path: Path) -> None:
    """A folder holding a train.csv that is not the embedded sample (the competition's, say) is
    refused before anything is written, by `demo` and by `sample` (even with --force)."""
    data = tmp_path / "data"
    data.mkdir()
    mine = {name: (sample_dir / name).read_bytes()
            for name in ("train.csv", "test.csv", "sample_submission.csv")}
    mine["train.csv"] = mine["train.csv"][:mine["train.csv"].rindex(b"\n", 0, -1) + 1]  # a row less
    for name, content in mine.items():
        (data / name).write_bytes(content)
    out = ["--runs-dir", str(tmp_path / "runs"), "--submissions-dir", str(tmp_path / "subs")]
    for command in (["demo", "--data", str(data), *out], ["sample", "--out", str(data)],
                    ["sample", "--out", str(data), "--force"]):
        proc = call_cli(*command, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip() == (
            f"error: {data / 'train.csv'}: not the embedded sample (your competition data?); "
            "the demo and `sample` never overwrite it: choose another folder with --data / --out "
            "(the default is data/sample/)")
        assert {p.name: p.read_bytes() for p in data.iterdir()} == mine
    assert not (tmp_path / "runs").exists() and not (tmp_path / "subs").exists()


def test_rerun_resumes_without_retraining(tiny_pipeline: dict) -> None:
    run = tiny_pipeline["run"]
    before = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/model.keras")}
    proc = call_cli("train", "--profile", "tiny", "--run", "demo", "--no-report",
                    *tiny_pipeline["common"])
    assert "resuming: 2 finished fold(s) kept, 0 to train" in proc.stdout
    assert "=== fold" not in proc.stdout
    assert before == {p: p.stat().st_mtime_ns for p in run.glob("fold_*/model.keras")}


def test_rerun_with_other_config_is_refused(tiny_pipeline: dict) -> None:
    proc = call_cli("train", "--profile", "tiny", "--run", "demo", "--set", "epochs=2",
                   *tiny_pipeline["common"], check=False)
    assert proc.returncode == 2
    assert "was started with another config (epochs: 4 → 2)" in last_error_line(proc)


def test_resume_finishes_a_partly_trained_run(tiny_pipeline: dict, tmp_path: Path) -> None:
    """Deleting a finished fold's metrics makes the next run retrain exactly that fold."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_pipeline["run"], runs / "demo")
    (runs / "demo" / "fold_1" / "metrics.json").unlink()
    common = [a if a != str(tiny_pipeline["root"] / "runs") else str(runs)
              for a in tiny_pipeline["common"]]
    proc = call_cli("train", "--profile", "tiny", "--run", "demo", "--no-report", *common)
    assert "resuming: 1 finished fold(s) kept, 1 to train" in proc.stdout
    assert "=== fold 2/2 ===" in proc.stdout and "=== fold 1/2 ===" not in proc.stdout


def test_predict_unfinished_run_is_a_clear_error(tiny_pipeline: dict, tmp_path: Path) -> None:
    proc = call_cli("predict", "--run", "nope", "--data", tiny_pipeline["common"][1],
                   "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no such run" in last_error_line(proc)


def test_max_folds_trains_part_then_finishes(sample_dir: Path, tmp_path: Path) -> None:
    common = ["--profile", "tiny", "--set", "epochs=2", "--run", "part", "--data", str(sample_dir),
              "--runs-dir", str(tmp_path)]
    first = call_cli("train", "--max-folds", "1", *common)
    assert "=== fold 1/2 ===" in first.stdout and "=== fold 2/2 ===" not in first.stdout
    assert "run 'part' is partial: fold 2 still to train" in first.stdout
    assert not (tmp_path / "part" / "metrics.json").exists()
    second = call_cli("train", "--no-report", *common)
    assert "resuming: 1 finished fold(s) kept, 1 to train" in second.stdout
    assert (tmp_path / "part" / "metrics.json").is_file()
    assert not (tmp_path / "part" / "report.html").exists() and "report:" not in second.stdout


@pytest.fixture(scope="module")
def second_member(tiny_pipeline: dict) -> Path:
    """Another member on the demo's folds: other weights, another architecture, Adam's betas
    changed and weight averaging (fewer epochs: the blend's arithmetic is what is checked)."""
    call_cli("train", "--profile", "tiny", "--run", "t2", "--set", "model_seed=1", "--set", "epochs=3",
             "--set", "model=deotte", "--set", "ema=0.9", "--set", "adam_beta_1=0.7",
             "--no-report", *tiny_pipeline["common"])
    return tiny_pipeline["root"] / "runs" / "t2"


def test_weight_averaging_saves_and_scores_the_averaged_weights(second_member: Path,
                                                                tiny_pipeline: dict) -> None:
    import keras

    model = keras.models.load_model(second_member / "fold_0" / "model.keras")
    adam = model.optimizer
    assert adam.use_ema and adam.ema_momentum == pytest.approx(0.9) and adam.beta_1 == pytest.approx(0.7)
    # The saved weights are the moving averages, not the last step's.
    averages = [v.numpy() for v in adam._model_variables_moving_average]
    assert all(np.array_equal(w.numpy(), a) for w, a in zip(model.trainable_weights, averages))
    # The fold's out-of-fold predictions (its val accuracy) come from exactly that model.
    x = pd.read_csv(tiny_pipeline["data"] / "train.csv").drop(columns="label").to_numpy()
    val = np.load(second_member / "fold_0" / "val_idx.npy")
    probs = model.predict(x[val].reshape(-1, 28, 28, 1).astype(np.uint8), verbose=0)
    assert np.allclose(probs, np.load(second_member / "fold_0" / "oof.npy"), atol=1e-5)


def test_blend_averages_runs_on_the_same_folds(tiny_pipeline: dict, second_member: Path) -> None:
    common = tiny_pipeline["common"]
    proc = call_cli("blend", "demo", "t2", "--name", "b12", *common, *tiny_pipeline["subs_flag"])
    runs = tiny_pipeline["root"] / "runs"
    sample_dir = tiny_pipeline["data"]
    y = pd.read_csv(sample_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    oof = (np.load(runs / "demo" / "oof_probs.npy") + np.load(runs / "t2" / "oof_probs.npy")) / 2
    blend = json.loads((runs / "b12" / "blend.json").read_text())
    assert blend["cv_accuracy"] == pytest.approx(np.mean(oof.argmax(1) == y))
    assert f"OOF accuracy {blend['cv_accuracy']:.4f}" in proc.stdout
    sub = pd.read_csv(tiny_pipeline["subs"] / "b12.csv")
    test = (np.load(runs / "demo" / "test_probs.npy") + np.load(runs / "t2" / "test_probs.npy")) / 2
    assert np.array_equal(sub["Label"].to_numpy(), test.argmax(1))
    # A run on other folds (another seed) cannot be blended honestly.
    call_cli("train", "--profile", "tiny", "--run", "t3", "--set", "seed=7", "--set", "epochs=1",
             "--no-report", *common)
    bad = call_cli("blend", "demo", "t3", *common, *tiny_pipeline["subs_flag"], check=False)
    assert bad.returncode == 2 and "used other folds" in last_error_line(bad)


def test_pseudo_labels_are_the_teacher_folds_most_confident(tiny_pipeline: dict) -> None:
    """Fold k adds the test images and the validation images that teacher fold k is surest of,
    labelled as that model says, and never a true validation label."""
    from pipeline.data.load import load_test
    from pipeline.modeling.model import load_model
    from pipeline.prediction.inference import average_probs

    common = tiny_pipeline["common"]
    args = ["train", "--profile", "tiny", "--run", "pl", "--set", "pseudo_from=demo",
            "--set", "pseudo_keep=0.5", "--set", "epochs=3", *common]
    proc = call_cli(*args, "--no-report")
    runs = tiny_pipeline["root"] / "runs"
    sample_dir = tiny_pipeline["data"]
    x_test = load_test(sample_dir / "test.csv")
    truth = pd.read_csv(sample_dir / "test_labels.csv")["Label"].to_numpy()
    folds = np.load(runs / "demo" / "folds.npy")
    metrics = json.loads((runs / "pl" / "metrics.json").read_text())
    teacher = json.loads((runs / "demo" / "metrics.json").read_text())
    for i in range(2):
        chosen = np.load(runs / "pl" / f"fold_{i}" / "pseudo.npy")
        test, val = chosen[chosen[:, 0] == 0], chosen[chosen[:, 0] == 1]
        val_idx = np.flatnonzero(folds == i)
        assert len(test) == 270 and len(val) == round(0.5 * len(val_idx))
        assert len(test) + len(val) == len(chosen) and np.all(np.diff(test[:, 1]) > 0)
        # Test images: the teacher fold model's most confident half, with its labels.
        probs = average_probs([load_model(str(runs / "demo" / f"fold_{i}" / "model.keras"))], x_test)
        conf = probs.max(1)
        assert conf[test[:, 1]].min() >= conf[np.setdiff1d(np.arange(len(x_test)), test[:, 1])].max()
        assert np.array_equal(test[:, 2], probs[test[:, 1]].argmax(1))
        assert np.mean(test[:, 2] == truth[test[:, 1]]) >= np.mean(probs.argmax(1) == truth)
        # Validation images: the same from the teacher's out-of-fold predictions on them.
        oof = np.load(runs / "demo" / "oof_probs.npy")
        assert set(val[:, 1]) <= set(val_idx)
        rest = np.setdiff1d(val_idx, val[:, 1])
        assert oof[val[:, 1]].max(1).min() >= oof[rest].max(1).max()
        assert np.array_equal(val[:, 2], oof[val[:, 1]].argmax(1))
        fold = metrics["folds"][i]
        assert fold["n_pseudo"] == len(chosen) and fold["n_train"] == teacher["folds"][i]["n_train"]
        assert (f"fold {i + 1}: + 270 test and {len(val)} validation images labelled by run 'demo'"
                in proc.stdout)
    assert metrics["cv_accuracy"] > 0.85
    again = call_cli(*args, "--no-report")
    assert "resuming: 2 finished fold(s) kept, 0 to train" in again.stdout
    # A fold trained again reuses its saved choice rather than asking the teacher anew.
    saved = runs / "pl" / "fold_1" / "pseudo.npy"
    before = (saved.read_bytes(), saved.stat().st_mtime_ns)
    (runs / "pl" / "fold_1" / "metrics.json").unlink()
    retrain = call_cli(*args)
    assert "resuming: 1 finished fold(s) kept, 1 to train" in retrain.stdout
    assert (saved.read_bytes(), saved.stat().st_mtime_ns) == before
    assert json.loads((runs / "pl" / "metrics.json").read_text())["folds"][1]["n_pseudo"] == len(chosen)
    html = (runs / "pl" / "report.html").read_text()
    assert "train images (+ pseudo-labelled)" in html
    assert f"<td>{fold['n_train']} +{fold['n_pseudo']}</td>" in html


@pytest.mark.parametrize("sets, message", [
    (["pseudo_from=nope"], "config: pseudo_from='nope': no finished run 'nope' in"),
    (["pseudo_from=plx"], "config: pseudo_from='plx' names this run itself"),
    (["pseudo_from=demo", "seed=7"], "config: pseudo_from='demo': run 'demo' was trained on other folds"),
])
def test_a_bad_pseudo_label_teacher_is_refused(tiny_pipeline: dict, sets: list[str],
                                               message: str) -> None:
    flags = [a for s in sets for a in ("--set", s)]
    proc = call_cli("train", "--profile", "tiny", "--run", "plx", *flags, *tiny_pipeline["common"],
                   check=False)
    assert proc.returncode == 2 and message in last_error_line(proc)
    assert "Traceback" not in proc.stderr
    assert not (tiny_pipeline["root"] / "runs" / "plx").exists()
