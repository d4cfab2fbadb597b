"""The leaderboard estimate: a stratified held-out share of train.csv, kept out of every fold and
scored on the fold ensemble by `predict`, compared paired between runs by `compare` and `blend`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from pipeline.data.folds import HOLDOUT, make_folds
from pipeline.prediction.evaluate import paired, score
from tests.conftest import call_cli, last_error_line


@pytest.fixture(scope="module")
def held(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny runs (model seeds 0 and 1) with holdout=0.15, trained and predicted."""
    root = tmp_path_factory.mktemp("holdout")
    common = ["--data", str(sample_dir), "--runs-dir", str(root / "runs")]
    subs = ["--submissions-dir", str(root / "subs")]
    out = {}
    for seed in (0, 1):
        run = f"h{seed}"
        # No report.html: the estimate's place in the report is test_report's business.
        train = call_cli("train", "--profile", "tiny", "--run", run, "--set", "holdout=0.15",
                         "--set", f"model_seed={seed}", "--set", "epochs=3", "--no-report", *common)
        predict = call_cli("predict", "--run", run, "--no-report", *common, *subs)
        out[run] = {"train": train.stdout, "predict": predict.stdout}
    y = pd.read_csv(sample_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    return {"runs": root / "runs", "subs": root / "subs", "common": common, "subs_flag": subs,
            "y": y, **out}


def _holdout_text(h: dict) -> str:
    """The one wording of a holdout estimate, as predict, blend, report, compare and submit print it."""
    return (f"{h['accuracy']:.4f} ({h['errors']} errors on {h['n']:,} held-out images, "
            f"95% CI {h['ci95'][0]:.4f}–{h['ci95'][1]:.4f})")


def test_split_is_stratified_seeded_and_disjoint_from_every_fold() -> None:
    y = np.repeat(np.arange(10), 60).astype(np.uint8)
    split = make_folds(y, 5, seed=3, holdout=0.2)
    held_out = split == HOLDOUT
    assert held_out.sum() == 120 and np.array_equal(np.bincount(y[held_out]), np.full(10, 12))
    assert set(split[~held_out]) == {0, 1, 2, 3, 4}  # every other row in exactly one fold
    assert np.array_equal(split, make_folds(y, 5, seed=3, holdout=0.2))
    # The held-out rows do not depend on k, so runs with other fold counts share the holdout.
    assert np.array_equal(held_out, make_folds(y, 4, seed=3, holdout=0.2) == HOLDOUT)
    assert not np.array_equal(held_out, make_folds(y, 5, seed=4, holdout=0.2) == HOLDOUT)


def test_no_fold_trains_or_validates_on_a_held_out_row(held: dict) -> None:
    run = held["runs"] / "h0"
    split = np.load(run / "folds.npy")
    rows = np.flatnonzero(split == HOLDOUT)
    assert len(rows) == round(0.15 * len(held["y"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_holdout"] == len(rows) and metrics["n_train"] == len(split) - len(rows)
    for i, fold in enumerate(metrics["folds"]):
        val = np.load(run / f"fold_{i}" / "val_idx.npy")
        assert not np.isin(val, rows).any()
        # A fold trains on the other folds' rows: all rows but its own and the held-out ones.
        assert fold["n_train"] == len(split) - len(rows) - len(val)
    oof = np.load(run / "oof_probs.npy")
    assert not oof[rows].any()  # held-out rows get no out-of-fold prediction
    keep = split != HOLDOUT
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(oof[keep].argmax(1) == held["y"][keep]))
    assert f"on {len(split) - len(rows)} images ({len(rows)} more held out)" in held["h0"]["train"]


def test_training_records_the_out_of_fold_statistics_without_a_report(held: dict) -> None:
    """metrics.json's interval, per-digit scores and confusions come from `train` (built with
    --no-report here), on the rows with an out-of-fold prediction only."""
    run = held["runs"] / "h0"
    assert not (run / "report.html").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    keep = np.load(run / "folds.npy") != HOLDOUT
    y, pred = held["y"][keep], np.load(run / "oof_probs.npy")[keep].argmax(1)
    exact = binomtest(int(np.sum(pred == y)), len(y)).proportion_ci(method="exact")
    assert metrics["cv_accuracy_ci95"] == pytest.approx([exact.low, exact.high])
    assert metrics["cv_accuracy_ci_method"] == "Clopper-Pearson (exact binomial)"
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (y, pred), 1)
    assert metrics["confusion_matrix"] == cm.tolist()
    assert [metrics["classification_report"][str(d)]["support"] for d in range(10)] == \
        np.bincount(y, minlength=10).tolist()


def test_predict_scores_the_ensemble_on_the_holdout(held: dict) -> None:
    run = held["runs"] / "h0"
    rows = np.flatnonzero(np.load(run / "folds.npy") == HOLDOUT)
    probs = np.load(run / "holdout_probs.npy")
    h = json.loads((run / "metrics.json").read_text())["holdout"]
    correct = int(np.sum(probs.argmax(1) == held["y"][rows]))
    assert h["n"] == len(rows) and h["errors"] == len(rows) - correct
    assert h["accuracy"] == pytest.approx(correct / len(rows))
    ci = binomtest(correct, len(rows)).proportion_ci(method="exact")
    assert h["ci95"] == pytest.approx([ci.low, ci.high]) and h["ci95"][0] <= h["accuracy"] <= h["ci95"][1]
    assert h["models"] == 2 and h["share"] == 0.15
    assert f"holdout estimate of the ensemble: {_holdout_text(h)}; conservative" in held["h0"]["predict"]
    # The fold ensemble: the mean of the fold models' predictions on those rows.
    from pipeline.config import resolve
    from pipeline.prediction.inference import average_probs, ensemble_models

    x = pd.read_csv(held["common"][1] + "/train.csv").to_numpy()[:, 1:].reshape(-1, 28, 28, 1)
    again = average_probs(ensemble_models(run, resolve("tiny")), x[rows].astype(np.uint8))
    assert np.allclose(again, probs, atol=1e-5)


def test_resume_reuses_the_holdout_and_a_changed_one_is_refused(held: dict) -> None:
    run = held["runs"] / "h0"
    before = np.load(run / "folds.npy")
    again = call_cli("train", "--profile", "tiny", "--run", "h0", "--set", "holdout=0.15",
                    "--set", "epochs=3", *held["common"])
    assert "resuming: 2 finished fold(s) kept, 0 to train" in again.stdout
    assert np.array_equal(np.load(run / "folds.npy"), before)
    # The holdout estimate is kept when a finished run is summarised again.
    assert "holdout" in json.loads((run / "metrics.json").read_text())
    changed = call_cli("train", "--profile", "tiny", "--run", "h0", "--set", "holdout=0.2",
                      "--set", "epochs=3", *held["common"], check=False)
    assert changed.returncode == 2
    assert "was started with another config (holdout: 0.15 → 0.2)" in last_error_line(changed)


def test_looking_at_a_run_never_changes_which_run_is_submitted(held: dict, tmp_path: Path) -> None:
    """Without --run, submit and predict take h1, trained last, though `report` and `predict`
    of h0 rewrote h0's metrics.json since; submit says what it is about to send."""
    runs, subs = tmp_path / "runs", tmp_path / "subs"
    shutil.copytree(held["runs"], runs)
    shutil.copytree(held["subs"], subs)
    data = held["common"][held["common"].index("--data") + 1]
    common = ["--data", data, "--runs-dir", str(runs), "--submissions-dir", str(subs)]
    before = (runs / "h0" / "metrics.json").read_bytes()
    report = call_cli("report", "--run", "h0", "--data", data, "--runs-dir", str(runs)).stdout
    assert (runs / "h0" / "metrics.json").read_bytes() == before  # `report` only reads it
    h0 = json.loads(before)
    assert f"holdout estimate of the ensemble: {_holdout_text(h0['holdout'])}" in report
    lo, hi = h0["cv_accuracy_ci95"]
    assert f"CV accuracy {h0['cv_accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f})" in report
    call_cli("predict", "--run", "h0", "--no-report", *common)
    said = " ".join(call_cli("submit", "--dry-run", *common).stdout.split())
    metrics = json.loads((runs / "h1" / "metrics.json").read_text())
    h = metrics["holdout"]
    assert "run 'h1' (profile tiny; the most recently trained run" in said
    assert f"CV accuracy {metrics['cv_accuracy']:.4f}" in said
    assert f"holdout estimate {_holdout_text(h)}" in said
    assert f"file {subs / 'h1.csv'} (540 rows, checked against sample_submission.csv)" in said
    assert "nothing was sent" in said
    predicted = call_cli("predict", "--no-report", *common).stdout
    assert f"(copy: {subs / 'h1.csv'})" in predicted


def test_compare_pairs_two_runs_on_the_same_holdout(held: dict) -> None:
    proc = call_cli("compare", "h0", "h1", "--runs-dir", str(held["runs"]))
    rows = np.flatnonzero(np.load(held["runs"] / "h0" / "folds.npy") == HOLDOUT)
    y = held["y"][rows]
    a, b = (np.load(held["runs"] / r / "holdout_probs.npy") for r in ("h0", "h1"))
    expect = paired(y, a, b)
    wrong_a, wrong_b = a.argmax(1) != y, b.argmax(1) != y
    assert expect["only_a"] == int(np.sum(wrong_a & ~wrong_b))
    assert expect["both"] == int(np.sum(wrong_a & wrong_b))
    best, other = ("h0", "h1") if score(y, a)["accuracy"] >= score(y, b)["accuracy"] else ("h1", "h0")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("paired on the same"))
    assert f"{len(rows)} held-out images" in line and "McNemar exact p = " in line
    assert f"only '{best}' makes" in line and f"only '{other}'" in line
    assert "holdout acc" in proc.stdout.splitlines()[0]
    # Every column from what train and predict recorded: no report was built for these runs.
    assert "(make report)" not in proc.stdout
    for run in ("h0", "h1"):
        m = json.loads((held["runs"] / run / "metrics.json").read_text())
        lo, hi = m["cv_accuracy_ci95"]
        row = next(line for line in proc.stdout.splitlines() if f" {run} " in f" {line} ")
        assert f"{m['cv_accuracy']:.4f}" in row and f"{lo:.4f}–{hi:.4f}" in row
        assert _holdout_text(m["holdout"]) in row


def test_mcnemar_is_exact_and_says_when_a_difference_is_noise() -> None:
    from pipeline.prediction.evaluate import paired_text

    y = np.zeros(100, dtype=int)
    good = np.eye(10)[np.zeros(100, dtype=int)]
    a, b = good.copy(), good.copy()
    a[:3, 0], a[:3, 1] = 0, 1  # A alone wrong on 3 rows
    b[3:4, 0], b[3:4, 1] = 0, 1  # B alone wrong on 1
    result = paired(y, a, b)
    assert (result["only_a"], result["only_b"], result["both"]) == (3, 1, 0)
    assert result["mcnemar_p"] == pytest.approx(binomtest(3, 4, 0.5).pvalue)  # 0.625
    assert "within the noise" in paired_text("a", "b", result)
    b2 = good.copy()
    a2 = good.copy()
    a2[:12, 0], a2[:12, 1] = 0, 1
    assert "'b' is better" in paired_text("a", "b", paired(y, a2, b2))


def test_blend_scores_the_blended_ensemble_on_the_holdout(held: dict) -> None:
    proc = call_cli("blend", "h0", "h1", "--name", "hb", *held["common"], *held["subs_flag"])
    rows = np.flatnonzero(np.load(held["runs"] / "h0" / "folds.npy") == HOLDOUT)
    mean = (np.load(held["runs"] / "h0" / "holdout_probs.npy")
            + np.load(held["runs"] / "h1" / "holdout_probs.npy")) / 2
    blend = json.loads((held["runs"] / "hb" / "blend.json").read_text())
    assert blend["holdout"]["errors"] == int(np.sum(mean.argmax(1) != held["y"][rows]))
    assert f"holdout estimate of the ensemble: {_holdout_text(blend['holdout'])}" in proc.stdout


def _script(name: str) -> Any:
    """scripts/<name>.py loaded as a module, so a test calls its main() in process."""
    import importlib.util

    from pipeline.config import CODE_ROOT

    spec = importlib.util.spec_from_file_location(name, CODE_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fold_screen_pairs_one_fold_on_its_validation_and_held_out_rows(held: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    """scripts/fold_screen.py: fold 1 of h1 against fold 1 of h0, on the rows neither model saw."""
    import keras

    screen = _script("fold_screen")
    data = held["common"][held["common"].index("--data") + 1]
    capsys.readouterr()
    assert screen.main(["--reference", "h0", "--runs", "h1", "--data", data,
                        "--runs-dir", str(held["runs"])]) == 0
    out = json.loads(capsys.readouterr().out)
    from pipeline.data.load import load_train

    x, _ = load_train(Path(data) / "train.csv")
    y, split = held["y"], np.load(held["runs"] / "h0" / "folds.npy")
    val, hold = np.flatnonzero(split == 0), np.flatnonzero(split == HOLDOUT)
    wrong = {}
    for run in ("h0", "h1"):
        fold = held["runs"] / run / "fold_0"
        model = keras.models.load_model(fold / "model.keras", compile=False)
        assert np.array_equal(np.load(fold / "val_idx.npy"), val)
        wrong[run] = np.concatenate([np.load(fold / "oof.npy").argmax(1) != y[val],
                                     model.predict(x[hold], verbose=0).argmax(1) != y[hold]])
    assert out["rows"] == {"validation": len(val), "holdout": len(hold)}
    assert sum(out["reference_errors"].values()) == int(wrong["h0"].sum())
    h1 = out["runs"]["h1"]
    assert h1["changed"] == {"model_seed": 1}
    assert sum(h1["errors"].values()) == int(wrong["h1"].sum())
    assert h1["paired_with_reference"]["only_a"] == int(np.sum(wrong["h0"] & ~wrong["h1"]))
    assert h1["paired_with_reference"]["both"] == int(np.sum(wrong["h0"] & wrong["h1"]))


def test_shared_errors_counts_the_rows_every_ensemble_misses(held: dict, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """scripts/shared_errors.py: h0's and h1's holdout errors, how many runs miss each row, a gallery."""
    data = held["common"][held["common"].index("--data") + 1]
    png = tmp_path / "shared.png"
    capsys.readouterr()
    assert _script("shared_errors").main(["--runs", "h0", "h1", "--data", data,
                                          "--runs-dir", str(held["runs"]), "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = np.flatnonzero(np.load(held["runs"] / "h0" / "folds.npy") == HOLDOUT)
    y = held["y"][rows]
    probs = {r: np.load(held["runs"] / r / "holdout_probs.npy") for r in ("h0", "h1")}
    wrong = {r: p.argmax(1) != y for r, p in probs.items()}
    for r in ("h0", "h1"):
        metrics = json.loads((held["runs"] / r / "metrics.json").read_text())
        assert out["ensemble_errors"][r] == int(wrong[r].sum()) == metrics["holdout"]["errors"]
    both = np.flatnonzero(wrong["h0"] & wrong["h1"])
    assert out["missed_by_every_run"] == len(both) == out["rows_missed_by_k_runs"]["2"]
    assert out["rows_missed_by_k_runs"]["1"] == int(np.sum(wrong["h0"] ^ wrong["h1"]))
    assert [e["train_csv_row"] for e in out["every_run_misses"]] == [int(rows[i]) + 2 for i in both]
    assert out["all_runs_averaged"]["errors"] == int(np.sum((probs["h0"] + probs["h1"]).argmax(1) != y))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_records_keep_the_wrong_rows_and_pair_as_the_runs_do(held: dict, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """scripts/budget_frontier.py records the ensemble's wrong train.csv rows, `--pair` pairs two
    records without their runs, and scripts/plot_frontier.py leaves out runs not timed alone."""
    from pipeline.config import Paths
    from pipeline.runfiles import RunFiles

    frontier = _script("budget_frontier")
    data = Path(held["common"][held["common"].index("--data") + 1])
    rows = np.flatnonzero(np.load(held["runs"] / "h0" / "folds.npy") == HOLDOUT)
    wrong, records = {}, []
    for run in ("h0", "h1"):
        wrong[run] = np.load(held["runs"] / run / "holdout_probs.npy").argmax(1) != held["y"][rows]
        kept = frontier.wrong_rows(RunFiles(held["runs"] / run), Paths(data, held["runs"], tmp_path))
        assert kept == [int(r) for r in rows[wrong[run]]]
        records.append({"run": run, "holdout_n": len(rows), "holdout_wrong": kept,
                        "holdout_errors": len(kept), "budget": "1m", "budget_seconds": 60.0,
                        "total_seconds": 50.0 + len(records), "rule": "ladder",
                        "cpu": "Some CPU", "cpu_family": "7"})
    # Timed beside other work: recorded, left out of the figure (they lack what it would draw).
    records += [{"run": "busy", "busy_loop_from": 30.0}, {"run": "tests", "beside": "make test"}]
    results = tmp_path / "frontier.json"
    results.write_text(json.dumps(records))
    capsys.readouterr()
    assert frontier.main(["--pair", "h0", "h1", "--results", str(results)]) == 0
    a, b = wrong["h0"], wrong["h1"]
    expected = frontier.paired_text("h0", "h1", frontier.paired_errors(a, b))
    assert capsys.readouterr().out.strip() == expected
    assert f"{int(np.sum(a & ~b))} errors only 'h0' makes, {int(np.sum(b & ~a))} only 'h1'" in \
        frontier.paired(*records[:2])
    png = tmp_path / "frontier.png"
    assert _script("plot_frontier").main(["--results", str(results), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
