"""Focused unit tests: folds, model shapes, ensemble averaging, submission validation, Makefile."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import CODE_ROOT, resolve
from pipeline.data.folds import load_folds, make_folds
from pipeline.data.submission import read_submission, validate_submission, write_submission
from pipeline.errors import UserError
from pipeline.prediction.inference import average_probs, shift
from tests.conftest import run_cli


def test_folds_disjoint_stratified_and_stable(tmp_path: Path) -> None:
    y = np.repeat(np.arange(10), 50).astype(np.uint8)
    f = make_folds(y, 5, seed=1)
    assert set(f) == {0, 1, 2, 3, 4}  # every row in exactly one fold
    for k in range(5):
        assert np.array_equal(np.bincount(y[f == k], minlength=10), np.full(10, 10))
    assert np.array_equal(f, make_folds(y, 5, seed=1))
    assert not np.array_equal(f, make_folds(y, 5, seed=2))
    saved = load_folds(tmp_path, y, 5, 1)
    assert np.array_equal(saved, f) and len(list((tmp_path / "folds").glob("*.npy"))) == 1
    assert np.array_equal(load_folds(tmp_path, y, 5, 1), f)


@pytest.mark.parametrize("name", ["simple", "deep", "lean", "strided", "deotte"])
def test_models_output_probabilities(name: str) -> None:
    from pipeline.modeling.model import build_model

    cfg = resolve("tiny", None, {"model": name})
    model = build_model(cfg, steps_per_epoch=3)
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    # Augmentation is only active in training: inference is deterministic.
    assert np.allclose(p, model.predict(x, verbose=0))


def test_refresh_batchnorm_sets_the_moving_statistics_to_the_batches_average() -> None:
    import keras

    from pipeline.modeling.model import refresh_batchnorm

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    norm = model.layers[-1]
    norm.moving_mean.assign([5.0, 5.0, 5.0])  # stale statistics, as after weight averaging
    x = np.random.default_rng(0).normal([1.0, -2.0, 3.0], [1.0, 2.0, 0.5], (20_000, 3)).astype("float32")
    refresh_batchnorm(model, x, batch_size=256, seed=0, batches=40)
    assert np.allclose(norm.moving_mean.numpy(), [1.0, -2.0, 3.0], atol=0.05)
    assert np.allclose(norm.moving_variance.numpy(), [1.0, 4.0, 0.25], rtol=0.1)
    assert norm.momentum == 0.9  # the layer's own momentum is back for further training


def test_lr_schedules() -> None:
    from pipeline.modeling.model import schedule

    def cfg(**sets: str):  # type: ignore[no-untyped-def]
        return resolve("cpu", None, {"epochs": "5", **sets})

    one = schedule(cfg(learning_rate="0.01", warmup_epochs="1"), steps_per_epoch=10)
    vals = [float(one(s)) for s in range(50)]
    assert vals[0] == pytest.approx(1e-2 / 25) and max(vals) == pytest.approx(1e-2, rel=0.05)
    assert vals[-1] < 1e-4 and np.argmax(vals) in (9, 10)
    assert schedule(cfg(lr_schedule="constant", learning_rate="0.003"), 10) == pytest.approx(3e-3)
    exp = schedule(cfg(lr_schedule="exponential", learning_rate="0.01", lr_decay="0.5"), 10)
    assert float(exp(20)) == pytest.approx(2.5e-3)
    cos = schedule(cfg(lr_schedule="cosine", learning_rate="0.01"), 10)
    assert float(cos(0)) == pytest.approx(1e-2) and float(cos(50)) == pytest.approx(1e-6)


class _Fixed:
    def __init__(self, p: np.ndarray) -> None:
        self.p = p

    def predict(self, x: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
        return np.repeat(self.p[None], len(x), axis=0)


def test_ensemble_averages_softmax() -> None:
    a, b = np.eye(10)[3] * 0.6 + 0.04, np.eye(10)[5] * 0.9 + 0.01
    avg = average_probs([_Fixed(a), _Fixed(b)], np.zeros((2, 28, 28, 1), np.uint8))
    assert np.allclose(avg[0], (a + b) / 2) and avg.argmax(1).tolist() == [5, 5]


def test_shift_moves_pixels_without_wrapping() -> None:
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 0, 0, 0] = 255
    assert shift(x, 1, 0)[0, 1, 0, 0] == 255 and shift(x, -1, 0).sum() == 0


def test_submission_validation(tmp_path: Path) -> None:
    ids = np.arange(1, 6)
    ok = write_submission(tmp_path / "s.csv", np.array([0, 1, 2, 3, 9]), ids)
    assert read_submission(tmp_path / "s.csv", ids).equals(ok)
    cases = {
        "header": pd.DataFrame({"Id": ids, "Label": 0}),
        "has 4 rows, expected 5": pd.DataFrame({"ImageId": ids[:4], "Label": 0}),
        "appears more than once": pd.DataFrame({"ImageId": [1, 2, 2, 4, 5], "Label": 0}),
        "row 2: ImageId 5, expected 1": pd.DataFrame({"ImageId": ids[::-1], "Label": 0}),
        "Label 10 is not a digit": pd.DataFrame({"ImageId": ids, "Label": [0, 1, 10, 1, 1]}),
        "is not an integer": pd.DataFrame({"ImageId": ids, "Label": ["a", 1, 1, 1, 1]}),
    }
    for message, df in cases.items():
        with pytest.raises(UserError, match=re.escape(message)):
            validate_submission(df, ids, "s.csv")
    with pytest.raises(UserError, match="is not a digit"):
        write_submission(tmp_path / "bad.csv", np.array([0, 1, 2, 3, 11]), ids)
    assert not (tmp_path / "bad.csv").exists()


def test_every_makefile_target_resolves() -> None:
    """Each documented target exists, and every script or module it names is real."""
    text = (CODE_ROOT / "Makefile").read_text()
    targets = re.findall(r"^## .*\n([a-zA-Z_-]+):", text, flags=re.M)
    assert {"help", "install", "demo", "train", "submission", "test", "clean"} <= set(targets)
    listed = run_cli("--help").stdout
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=CODE_ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        for script in re.findall(r"(scripts/\S+\.py|tests/?\S*)", dry.stdout):
            assert (CODE_ROOT / script).exists(), f"make {target} names missing {script}"
        for command in re.findall(r"-m pipeline (\w[\w-]*)", dry.stdout):
            assert re.search(rf"^    {command}\s", listed, flags=re.M), f"make {target}: no command {command}"
    assert subprocess.run(["make"], cwd=CODE_ROOT, capture_output=True, text=True).stdout.count("\n") \
        >= len(targets)


def _make(*args: str, cwd: Path = CODE_ROOT) -> subprocess.CompletedProcess[str]:
    """`make ARGS` with no terminal attached and none of the Makefile's variables set around it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUN", "RUNS", "STUDY", "PROFILE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)


def _pipeline_command(*args: str) -> str:
    """The `python -m pipeline …` line that `make -n ARGS` would run."""
    return next(line for line in _make("-n", *args).stdout.splitlines() if "-m pipeline " in line)


def test_every_target_that_takes_a_run_picks_it_by_one_rule() -> None:
    """Without RUN the targets leave the choice to the command (the most recently trained run;
    `train`: the profile's name); with RUN=x each passes --run x."""
    for target, command in (("submission", "predict"), ("submit", "submit"), ("report", "report"),
                            ("train", "train")):
        line = _pipeline_command(target)
        assert f"-m pipeline {command} " in line and "--run" not in line, line
        assert "--run x " in _pipeline_command(target, "RUN=x") + " "


def test_make_clean_keeps_runs_studies_and_submissions(tmp_path: Path) -> None:
    """`make clean` removes only what is rebuilt in seconds; a run or a study is deleted only by
    the target that names it, and only when RUN / STUDY is given on the command line."""
    (tmp_path / "Makefile").write_bytes((CODE_ROOT / "Makefile").read_bytes())
    files = {"runs/cpu/config.json", "runs/cpu/fold_0/model.keras", "runs/demo/config.json",
             "runs/tune/default/study.db", "runs/bench/bench.json", "runs/cache/train.npz",
             "submissions/submission.csv", "submissions/cpu.csv", "data/train.csv",
             "data/sample/train.csv", "pipeline/cli.py", "pipeline/__pycache__/cli.cpython-311.pyc"}
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")

    def left() -> set[str]:
        return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                if p.is_file() and p.name != "Makefile"}

    assert _make("clean", cwd=tmp_path).returncode == 0
    kept = files - {"runs/cache/train.npz", "data/sample/train.csv",
                    "pipeline/__pycache__/cli.cpython-311.pyc"}
    assert left() == kept
    for args, says in ((["clean-run"], "RUN=cpu"), (["clean-study"], "STUDY=default"),
                       (["clean-run", "RUN=../data"], "not a run"),
                       (["clean-run", "RUN=cache"], "not a run")):
        proc = _make(*args, cwd=tmp_path)
        assert proc.returncode != 0 and says in proc.stderr, (args, proc.stderr)
        assert left() == kept
    proc = _make("clean-run", "RUN=cpu", cwd=tmp_path)
    assert proc.returncode == 0 and "deleting runs/cpu/" in proc.stdout
    assert left() == kept - {"runs/cpu/config.json", "runs/cpu/fold_0/model.keras"}
    proc = _make("clean-study", "STUDY=default", cwd=tmp_path)
    assert proc.returncode == 0 and "deleting runs/tune/default/" in proc.stdout
    assert left() == kept - {"runs/cpu/config.json", "runs/cpu/fold_0/model.keras",
                             "runs/tune/default/study.db"}
