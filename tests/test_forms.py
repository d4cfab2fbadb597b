"""The fast training form of a model and its portable saved form: fused BatchNorm against Keras'
own layer, the two forms computing the same function, precision kept through a resume, and a
fold whose loss turns NaN stopping the run with nothing of it saved."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import resolve
from pipeline.modeling import model as model_mod
from pipeline.modeling.batchnorm import FusedBatchNormalization
from pipeline.modeling.model import build_model, copy_state, training_form
from tests.conftest import call_cli

# Tolerances: float32 differs only by the order of the sums (1e-5 of values of order 1);
# bfloat16 keeps 8 bits of mantissa, so a value may differ by one unit in its last place
# (2**-7 relative) between two kernels that round at different steps.
TOLERANCE = {"float32": dict(rtol=1e-4, atol=1e-5), "bfloat16": dict(rtol=2**-7, atol=2**-7)}


def _grads(layer: keras.layers.Layer, x: tf.Tensor, w: np.ndarray) -> tuple:
    """Training-mode output, gradients of a weighted sum of it (input, gamma, beta)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_batchnorm_matches_keras(dtype: str) -> None:
    """Outputs, gradients and moving statistics over three training steps, then inference."""
    rng = np.random.default_rng(0)
    policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    stock = keras.layers.BatchNormalization(momentum=0.9, dtype=policy)
    fused = FusedBatchNormalization(momentum=0.9, dtype=policy)
    for layer in (stock, fused):
        layer.build((16, 6, 6, 8))
        layer.gamma.assign(np.linspace(0.5, 1.5, 8, dtype=np.float32))
        layer.beta.assign(np.linspace(-1, 1, 8, dtype=np.float32))
    for step in range(3):
        x = tf.cast(rng.normal(2.0, 3.0, (16, 6, 6, 8)).astype(np.float32), dtype)
        w = rng.normal(size=(16, 6, 6, 8)).astype(np.float32)
        ours, theirs = _grads(fused, x, w), _grads(stock, x, w)
        assert ours[0].dtype == theirs[0].dtype == tf.as_dtype(dtype)
        for a, b, what in zip(ours, theirs, ("output", "d input", "d gamma", "d beta")):
            a, b = np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32))
            np.testing.assert_allclose(a, b, **TOLERANCE[dtype], err_msg=f"step {step}: {what}")
        # The moving variance follows the plain batch variance, as Keras' does (the fused
        # kernel's own is Bessel-corrected: 576/575 larger, outside this tolerance).
        np.testing.assert_allclose(fused.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-5)
        np.testing.assert_allclose(fused.moving_variance.numpy(), stock.moving_variance.numpy(),
                                   rtol=1e-5)
    assert not np.allclose(stock.moving_variance.numpy(), 1.0)  # the statistics did move
    inference = [np.asarray(tf.cast(layer(x, training=False), tf.float32)) for layer in (fused, stock)]
    np.testing.assert_allclose(*inference, **TOLERANCE[dtype])


def test_fused_batchnorm_leaves_what_it_cannot_serve_to_keras() -> None:
    """The dense head's 2-D BatchNorm takes Keras' own path: the very same numbers."""
    x = tf.constant(np.random.default_rng(1).normal(size=(32, 5)).astype(np.float32))
    stock, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    np.testing.assert_array_equal(fused(x, training=True).numpy(), stock(x, training=True).numpy())
    np.testing.assert_array_equal(fused.moving_variance.numpy(), stock.moving_variance.numpy())


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_two_forms_compute_the_same_function(precision: str) -> None:
    cfg = resolve("tiny", sets={"precision": precision, "model": "lean"})
    saved = build_model(cfg, steps_per_epoch=10)
    trained = training_form(saved, cfg, steps_per_epoch=10)
    norms = [type(layer) for layer in trained.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # lean: four conv BatchNorms on the fused kernel, and the dense head's, which (2-D) the
    # layer hands to Keras' own code.
    assert norms == [FusedBatchNormalization] * 5
    policies = {layer.name: layer.dtype_policy.name for layer in trained.layers}
    assert policies[model_mod.OUTPUT] == "float32"  # the softmax and the loss stay float32
    assert all(p == "float32" for name, p in policies.items() if "random" in name or "rescaling" in name)
    assert {p for p in policies.values()} == {"float32", precision}
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}

    x = np.random.default_rng(2).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    a, b = saved.predict(x, verbose=0), trained.predict(x, verbose=0)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5 if precision == "float32" else 0.05)
    # Train a step, then copy back: the saved form holds exactly the trained state.
    trained.fit(x, np.eye(10, dtype=np.float32)[np.arange(64) % 10], batch_size=32, verbose=0)
    copy_state(trained, saved)
    for u, v in zip(saved.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)
    assert int(saved.optimizer.iterations) == int(trained.optimizer.iterations) == 2
    for u, v in zip(saved.optimizer.variables, trained.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_bfloat16_run_saves_float32_models_and_resumes_in_bfloat16(
        sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after an epoch, then resumed on "another host" (auto would pick float32 there): the
    run keeps its precision, and the resumed fold trains in the training form again."""
    flags = ["train", "--profile", "tiny", "--run", "bf", "--data", str(sample_dir),
             "--runs-dir", str(tmp_path), "--no-report", "--set", "epochs=2", "--set", "folds=2"]
    seen: list[tuple[str, set[str]]] = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            conv = next(la for la in self.model.layers if isinstance(la, keras.layers.Conv2D))
            seen.append((conv.dtype_policy.name,
                         {type(la).__name__ for la in self.model.layers}))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if len(seen) == 1 and epoch == 0:
                raise KeyboardInterrupt  # a kill after fold 1's first epoch was checkpointed

    real_fit = model_mod.keras.Model.fit

    def fit(self, *args, callbacks=(), **kwargs):  # type: ignore[no-untyped-def]
        return real_fit(self, *args, callbacks=[*callbacks, Watch()], **kwargs)

    monkeypatch.setattr(model_mod.keras.Model, "fit", fit)
    assert call_cli(*flags, "--set", "precision=mixed_bfloat16", check=False).returncode == 130
    config = json.loads((tmp_path / "bf" / "config.json").read_text())
    assert config["precision"] == "mixed_bfloat16"  # resolved and saved before the first fold
    assert (tmp_path / "bf" / "fold_0" / "last.keras").is_file()
    # Resume with precision=auto on a machine without bf16: the run keeps mixed_bfloat16.
    monkeypatch.setattr("pipeline.training.train.this_machine",
                        lambda: __import__("pipeline.machine.plan", fromlist=["Machine"]).Machine(1))
    proc = call_cli(*flags, "--set", "precision=auto")
    assert "resuming fold 1 after epoch 1" in proc.stdout and " · mixed_bfloat16 · " in proc.stdout
    assert [s[0] for s in seen] == ["mixed_bfloat16"] * 3  # fold 1, fold 1 resumed, fold 2
    assert all("FusedBatchNormalization" in s[1] for s in seen)
    for fold in (0, 1):  # what was saved is plain Keras in float32
        m = keras.models.load_model(tmp_path / "bf" / f"fold_{fold}" / "model.keras")
        assert {la.dtype_policy.name for la in m.layers} == {"float32"}
        assert "FusedBatchNormalization" not in {type(la).__name__ for la in m.layers}
    # Asking for another precision on resume is a config change, refused like any other.
    proc = call_cli(*flags, "--set", "precision=float32", check=False)
    assert proc.returncode == 2 and "precision: 'mixed_bfloat16' → 'float32'" in proc.stderr


def test_a_fold_whose_loss_turns_nan_stops_the_run(sample_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold 2's weights poisoned before it trains: exit 2 with one line naming the fold and the
    epoch; fold 1 kept; nothing of fold 2 saved, no run metrics, no predictions."""
    real = model_mod.build_state
    calls: list[int] = []

    def poisoned(model: keras.Model) -> None:
        real(model)
        calls.append(1)
        if len(calls) == 2:
            kernel = model.get_layer(model_mod.OUTPUT).kernel  # (ReLU turns NaN into 0 earlier)
            kernel.assign(np.full(kernel.shape, np.nan, dtype=np.float32))

    monkeypatch.setattr(model_mod, "build_state", poisoned)
    proc = call_cli("train", "--profile", "tiny", "--run", "nan", "--data", str(sample_dir),
                    "--runs-dir", str(tmp_path), "--no-report", "--set", "epochs=2", check=False)
    assert proc.returncode == 2
    # (An in-process run after other tests may add a warning about TensorFlow's threads.)
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith("warning: TensorFlow has already started")]
    assert lines == ["error: fold 2/2: the training loss and validation loss became nan in epoch 1; "
                     "the fold stopped "
                     "before saving it (finished folds are kept). Start a new run (--run NAME) "
                     "with --set precision=float32, or a lower --set learning_rate"], lines
    run = tmp_path / "nan"
    assert (run / "fold_0" / "metrics.json").is_file() and (run / "fold_0" / "model.keras").is_file()
    assert not [p.name for p in (run / "fold_1").iterdir() if p.suffix in (".keras", ".npy", ".json")]
    assert not (run / "metrics.json").exists() and not (run / "oof_probs.npy").exists()


def test_steps_per_execution_leaves_the_numbers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several training steps per call into TensorFlow: the same weights as one step per call."""
    x = np.random.default_rng(3).integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[np.arange(200) % 10]
    cfg = resolve("tiny", sets={"precision": "mixed_bfloat16"})
    weights = []
    for steps in (1, model_mod.STEPS_PER_EXECUTION):
        monkeypatch.setattr(model_mod, "STEPS_PER_EXECUTION", steps)
        keras.utils.set_random_seed(5)
        trained = training_form(build_model(cfg, 7), cfg, 7)
        trained.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=True)  # 6.25 steps an epoch
        weights.append(trained.get_weights())
    assert model_mod.STEPS_PER_EXECUTION > 1
    for u, v in zip(*weights, strict=True):
        np.testing.assert_array_equal(u, v)


def test_float16_on_a_cpu_is_refused_before_anything_is_written(
        sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.machine.plan import Machine

    monkeypatch.setattr("pipeline.training.train.this_machine", lambda: Machine(2, cpu_flags=frozenset()))
    proc = call_cli("train", "--profile", "tiny", "--data", str(sample_dir), "--runs-dir",
                    str(tmp_path / "runs"), "--set", "precision=mixed_float16", check=False)
    assert proc.returncode == 2 and not (tmp_path / "runs" / "tiny").exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config: precision=mixed_float16 needs a GPU (a CPU has no fast float16); use "
        "auto, float32 or mixed_bfloat16")


def test_train_trains_in_the_plans_precision(sample_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The precision is resolved once, by the plan: the one config.json records and the folds
    train in is env.json's plan's, on a made-up AMX machine and under a plan that picks another."""
    from pipeline.machine.plan import Machine, choose
    from pipeline.training import train as train_mod

    monkeypatch.setattr(train_mod, "this_machine",
                        lambda: Machine(2, cpu_flags=frozenset({"amx_bf16", "amx_tile"})))
    trained_in: list[str] = []

    def stop(cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        trained_in.append(cfg.precision)
        raise KeyboardInterrupt  # nothing to train: the config the folds would train with is known

    monkeypatch.setattr(train_mod, "_train_serial", stop)
    flags = ["train", "--profile", "tiny", "--data", str(sample_dir), "--runs-dir", str(tmp_path),
             "--no-report", "--set", "precision=auto"]

    def recorded(run: str) -> tuple[str, str]:
        assert call_cli(*flags, "--run", run, check=False).returncode == 130
        return (json.loads((tmp_path / run / "config.json").read_text())["precision"],
                json.loads((tmp_path / run / "env.json").read_text())["plan"]["precision"])

    assert recorded("auto") == ("mixed_bfloat16",) * 2
    monkeypatch.setattr(train_mod, "choose", lambda cfg, machine, n, speeds=None: replace(
        choose(cfg, machine, n, speeds), precision="float32"))
    assert recorded("planned") == ("float32",) * 2
    assert trained_in == ["mixed_bfloat16", "float32"]
