"""Refit members (`refit=N`): models trained on every labelled row beside the folds, averaged for
the submission instead of the fold models; resumable and checked like folds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.config import Paths, resolve
from pipeline.data.folds import train_rows, val_rows
from pipeline.modeling import model as model_mod
from pipeline.prediction.inference import average_probs, ensemble_models
from pipeline.runfiles import RunFiles, fold_done, trained_at
from pipeline.training.jobs import job_for
from tests.conftest import FOLD_FILES, call_cli, run_files, sha256

RUN_FILES = {"config.json", "env.json", "folds.npy", "oof_probs.npy", "metrics.json", "folds.csv"}


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict:
    """2 folds + 2 members (holdout 0.15), interrupted after member 1's first epoch, resumed."""
    work = tmp_path_factory.mktemp("members")
    args = ["train", "--profile", "tiny", "--run", "m", "--data", str(sample_dir), "--runs-dir",
            str(work / "runs"), "--no-report", "--set", "epochs=2", "--set", "refit=2",
            "--set", "holdout=0.15"]
    epochs: list[int] = []

    class KillInMember1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epochs.append(epoch)
            if len(epochs) == 5:  # folds 1-2 took 4 epochs: this is member 1's first
                raise KeyboardInterrupt

    real_fit = keras.Model.fit

    def fit(self, *a, callbacks=(), **kw):  # type: ignore[no-untyped-def]
        return real_fit(self, *a, callbacks=[*callbacks, KillInMember1()], **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.Model, "fit", fit)
        first = call_cli(*args, check=False)
    run = work / "runs" / "m"
    folds_before = {i: sha256(run / f"fold_{i}" / "model.keras") for i in (0, 1)}
    second = call_cli(*args)
    return {"args": args, "run": run, "work": work, "first": first, "second": second,
            "folds_before": folds_before, "sample": sample_dir}


def test_an_interrupted_member_resumes_from_its_checkpoint(members: dict) -> None:
    first, second, run = members["first"], members["second"], members["run"]
    assert first.returncode == 130
    assert "interrupted in member 1/2 after epoch 1; finished folds and the last epoch are saved" \
        in first.stderr
    assert "resuming: 2 finished fold(s) kept, 2 to train" in second.stdout
    assert "  resuming member 1 after epoch 1 (" in second.stdout
    assert "=== fold" not in second.stdout  # the folds were not retrained
    assert "member 1: trained in" in second.stdout and "member 2: trained in" in second.stdout
    for i in (0, 1):
        assert sha256(run / f"fold_{i}" / "model.keras") == members["folds_before"][i]
    assert list(pd.read_csv(run / "member_0" / "history.csv")["epoch"]) == [1, 2]


def test_members_train_on_every_labelled_row_and_leave_the_cv_to_the_folds(members: dict) -> None:
    run = members["run"]
    expected = (RUN_FILES | {f"fold_{i}/{n}" for i in (0, 1) for n in FOLD_FILES}
                | {f"member_{j}/{n}" for j in (0, 1) for n in FOLD_FILES})
    assert run_files(run) == expected  # no checkpoint, lock or temp file left over
    metrics = json.loads((run / "metrics.json").read_text())
    split = np.load(run / "folds.npy")
    labelled = int(np.sum(split >= 0))
    assert [m["member"] for m in metrics["members"]] == [1, 2]
    assert all(m["n_train"] == labelled and m["n_val"] == 0 and "val_accuracy" not in m
               for m in metrics["members"])
    assert [m["fold"] for m in metrics["folds"]] == [1, 2] and metrics["n_train"] == labelled
    y = pd.read_csv(members["sample"] / "train.csv", usecols=["label"])["label"].to_numpy()
    oof = np.load(run / "oof_probs.npy")
    rows = np.flatnonzero(split >= 0)
    assert metrics["cv_accuracy"] == pytest.approx(np.mean(oof[rows].argmax(1) == y[rows]))
    for j in (0, 1):
        assert fold_done(run / f"member_{j}", log=pytest.fail) is not None  # checksums hold
        assert np.load(run / f"member_{j}" / "val_idx.npy").size == 0


def test_the_submission_averages_the_members(members: dict, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(members["run"].parent, runs, ignore=shutil.ignore_patterns("cache"))
    proc = call_cli("predict", "--run", "m", "--data", str(members["sample"]), "--runs-dir",
                    str(runs), "--submissions-dir", str(tmp_path / "subs"), "--no-report")
    assert "2 refit members on 540 test images" in proc.stdout
    metrics = json.loads((runs / "m" / "metrics.json").read_text())
    assert metrics["holdout"]["models"] == 2
    cfg = resolve("tiny", sets={"refit": "2"})
    models = ensemble_models(runs / "m", cfg)
    saved = [keras.models.load_model(runs / "m" / f"member_{j}" / "model.keras") for j in (0, 1)]
    assert len(models) == 2 and all(np.array_equal(a.get_weights()[0], b.get_weights()[0])
                                    for a, b in zip(models, saved))
    x = pd.read_csv(members["sample"] / "test.csv").to_numpy().reshape(-1, 28, 28, 1).astype(np.uint8)
    np.testing.assert_allclose(np.load(runs / "m" / "test_probs.npy"), average_probs(models, x),
                               atol=1e-5)
    # A damaged member model is refused, like a damaged fold model.
    model = runs / "m" / "member_1" / "model.keras"
    data = bytearray(model.read_bytes())
    data[-5000] ^= 0x01
    model.write_bytes(bytes(data))
    proc = call_cli("predict", "--run", "m", "--data", str(members["sample"]), "--runs-dir",
                    str(runs), "--submissions-dir", str(tmp_path / "subs"), check=False)
    assert proc.returncode == 2 and "member_1/model.keras: does not match the checksum" in proc.stderr


def test_more_members_on_a_finished_run_train_only_the_new_ones(members: dict,
                                                                 tmp_path: Path) -> None:
    """`refit` may grow when a run resumes; a damaged member is retrained, the rest kept."""
    runs = tmp_path / "runs"
    shutil.copytree(members["run"].parent, runs, ignore=shutil.ignore_patterns("cache"))
    run = runs / "m"
    kept = sha256(run / "member_1" / "model.keras")
    before = trained_at(run)
    hist = run / "member_0" / "history.csv"
    hist.write_text(hist.read_text().replace("\n2,", "\n7,", 1))
    args = [a if a != str(members["run"].parent) else str(runs) for a in members["args"]]
    args[args.index("refit=2")] = "refit=3"
    out = call_cli(*args).stdout
    assert "member_0: saved files are missing or corrupt (checksum mismatch)" in out
    assert "resuming: 2 finished fold(s) and 1 member(s) kept, 2 to train" in out
    assert "=== member 1/3 ===" in out and "=== member 3/3 ===" in out and "member 2/3 ===" not in out
    assert sha256(run / "member_1" / "model.keras") == kept
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["member"] for m in metrics["members"]] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["refit"] == 3
    # New members make the run "trained later": a submission built before them is stale.
    assert trained_at(run) > before


def test_refit_with_early_stopping_is_refused(sample_dir: Path, tmp_path: Path) -> None:
    proc = call_cli("train", "--profile", "tiny", "--data", str(sample_dir), "--runs-dir",
                    str(tmp_path), "--set", "refit=2", "--set", "early_stopping=3", check=False)
    assert proc.returncode == 2 and not any(tmp_path.iterdir())
    assert proc.stderr.strip().endswith("config: refit=2 needs early_stopping=0: members train on "
                                        "every labelled row, with none left to stop on")


def test_members_draw_other_weights_than_the_folds(members: dict) -> None:
    """Member seeds follow the folds' (seed + 1000 · k): no member repeats a fold's model."""
    run = members["run"]
    weights = [keras.models.load_model(run / d / "model.keras").get_layer(model_mod.OUTPUT).kernel
               for d in ("fold_0", "fold_1", "member_0", "member_1")]
    flat = [np.asarray(w).ravel() for w in weights]
    assert all(not np.allclose(flat[a], flat[b]) for a in range(4) for b in range(a + 1, 4))


def test_the_gpu_profile_trains_and_predicts_on_a_cpu(sample_dir: Path, tmp_path: Path) -> None:
    """`gpu` (unmeasured on a GPU): batch 256, LR 0.004, refit members; here cut to a smoke run."""
    cfg = resolve("gpu")
    assert (cfg.batch_size, cfg.learning_rate, cfg.refit) == (256, 0.004, 10)
    flags = ["--data", str(sample_dir), "--runs-dir", str(tmp_path / "runs"), "--no-report"]
    out = call_cli("train", "--profile", "gpu", "--run", "g", *flags, "--set", "epochs=2",
                   "--set", "folds=2", "--set", "refit=1", "--set", "filters=8",
                   "--set", "dense_units=16", "--set", "precision=float32", "--set", "workers=1").stdout
    assert "batch 256" in out and "member 1: trained in" in out
    proc = call_cli("predict", "--run", "g", *flags, "--submissions-dir", str(tmp_path / "subs"))
    assert "1 refit member × 5 TTA views on 540 test images" in proc.stdout
    assert len(pd.read_csv(tmp_path / "subs" / "g.csv")) == 540


def test_a_run_lists_its_models_as_typed_entries(members: dict, tmp_path: Path) -> None:
    """RunFiles.models: each model knows its index and whether it is a member, so no caller counts
    folds to tell; on a partial run (a fold and a member damaged, `refit` grown) the models still
    to train are the entries whose files are not finished, and their jobs follow the entries."""
    run = tmp_path / "runs" / "m"
    shutil.copytree(members["run"], run)
    cfg = resolve("tiny", sets={"refit": "3"})
    rf = RunFiles(run)
    models = rf.models(cfg)
    assert [(m.index, m.member, m.number, m.files.root, m.label, m.label_of) for m in models] == [
        (0, False, 0, run / "fold_0", "fold 1", "fold 1/2"),
        (1, False, 1, run / "fold_1", "fold 2", "fold 2/2"),
        (2, True, 0, run / "member_0", "member 1", "member 1/3"),
        (3, True, 1, run / "member_1", "member 2", "member 2/3"),
        (4, True, 2, run / "member_2", "member 3", "member 3/3")]
    # The ensemble: the members that finished (member 3 is still to train), else the folds.
    assert rf.ensemble(cfg) == models[2:4] and rf.ensemble(replace(cfg, refit=0)) == models[:2]
    for folder in ("fold_1", "member_0"):
        (run / folder / "metrics.json").unlink()
    todo = [m for m in models if fold_done(m.files.root, log=pytest.fail) is None]
    assert [m.label for m in todo] == ["fold 2", "member 1", "member 3"]
    split = np.load(run / "folds.npy")
    x = np.zeros((len(split), 28, 28, 1), np.uint8)
    paths = Paths(members["sample"], tmp_path / "runs", tmp_path / "subs")
    fold, member, _ = (job_for(cfg, paths, "m", x, split, m, log=pytest.fail) for m in todo)
    np.testing.assert_array_equal(fold.train_idx, train_rows(split, 1))
    np.testing.assert_array_equal(fold.val_idx, val_rows(split, 1))
    np.testing.assert_array_equal(member.train_idx, np.flatnonzero(split >= 0))
    assert member.val_idx.size == 0
    assert (fold.seed, member.seed) == (cfg.seed + 1000, cfg.seed + 2000)
