"""Model registry: builder functions by name, each configured by the run's hyperparameters.

Every model takes uint8 images (N, 28, 28, 1); scaling to [0, 1] and augmentation are layers
inside the model, so training and prediction see the same preprocessing and augmentation is
off at inference.

    saved = build_model(cfg, steps_per_epoch=263)         # plain Keras layers, float32
    model = training_form(saved, cfg, steps_per_epoch=263)  # fused BatchNorm, cfg.precision
    model.fit(...)
    copy_state(model, saved)                                # the trained state, saved form
    saved.save("model.keras")

A model trains in its *training form* (BatchNorm on the fused kernel, `cfg.precision`) and is
saved, checkpointed and used for predictions in its *saved form* (Keras' BatchNormalization,
float32), which computes the same function and loads anywhere without this package.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.console import quiet_tensorflow

quiet_tensorflow()  # before Keras loads TensorFlow, which prints its start-up lines then

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from pipeline.config import MODEL_NAMES, Config  # noqa: E402
from pipeline.modeling.batchnorm import FusedBatchNormalization  # noqa: E402

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
# Keras' default 0.99 needs hundreds of steps before the moving statistics are usable;
# short runs (the sample, tuning trials) have far fewer.
BN_MOMENTUM = 0.9
FLOOR = 1e-4  # the cosine schedules end at this fraction of the peak learning rate
OUTPUT = "probs"  # the softmax layer's name
# Training steps per call into TensorFlow: the same batches in the same order (the same numbers),
# with less of Python's per-step overhead (measured +10% images/s on one bf16 CPU thread).
STEPS_PER_EXECUTION = 32
# Layers that compute in float32 whatever the precision: the input scaling and augmentation
# (image geometry), and the softmax output (the loss reads it).
FLOAT32_LAYERS = (layers.Rescaling, layers.RandomRotation, layers.RandomZoom,
                  layers.RandomTranslation)


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, strides: int = 1,
             padding: str = "same") -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.ReLU()(x)


def _dense_head(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    x = layers.Flatten()(x)
    x = layers.Dense(cfg.dense_units, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.ReLU()(x)
    return layers.Dropout(cfg.dense_dropout)(x)


def simple(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """The classic Conv-Pool-Conv-Pool-Dense network (Keras' mnist_convnet), the baseline."""
    x = layers.Conv2D(cfg.filters, cfg.kernel_size, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(cfg.filters * 2, cfg.kernel_size, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(cfg.dense_units, activation="relu")(x)
    return layers.Dropout(cfg.dense_dropout)(x)


def conv_pool(x: keras.KerasTensor, cfg: Config, padding: str = "same") -> keras.KerasTensor:
    """Two BatchNorm/ReLU double-conv blocks with max-pooling and dropout, then a dense head."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, cfg.kernel_size, padding=padding)
        x = _conv_bn(x, width, cfg.kernel_size, padding=padding)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(cfg.dropout)(x)
    return _dense_head(x, cfg)


def deep(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """`conv_pool` with padded convs (28→14→7)."""
    return conv_pool(x, cfg, padding="same")


def lean(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """`conv_pool` with unpadded convs (28→24→12→8→4): half the multiply-adds per image."""
    return conv_pool(x, cfg, padding="valid")


def strided(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """Like `deep` but downsampling with a learned 5×5 stride-2 conv instead of pooling."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, cfg.kernel_size)
        x = _conv_bn(x, width, cfg.kernel_size)
        x = _conv_bn(x, width, 5, strides=2)
        x = layers.Dropout(cfg.dropout)(x)
    return _dense_head(x, cfg)


def deotte(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """Chris Deotte's Kaggle MNIST stack (32C3-32C3-32C5S2-64C3-64C3-64C5S2-128C4, BatchNorm
    after each), unpadded 28→26→24→12→10→8→4→1, with the output layer straight after it.
    Its sizes fit 3×3 kernels only, so `kernel_size` does not apply."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, 3, padding="valid")
        x = _conv_bn(x, width, 3, padding="valid")
        x = _conv_bn(x, width, 5, strides=2)
        x = layers.Dropout(cfg.dropout)(x)
    x = _conv_bn(x, cfg.filters * 4, 4, padding="valid")
    x = layers.Flatten()(x)
    return layers.Dropout(cfg.dense_dropout)(x)


# The registry, derived from config.MODEL_NAMES: each name is the function that builds it.
MODELS = {name: globals()[name] for name in MODEL_NAMES}


def schedule(cfg: Config, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The per-step learning rate as a built-in Keras schedule (so any Keras loads the model).

    onecycle: a linear rise from peak/25 over `warmup_epochs`, then cosine annealing to
    peak·1e-4; cosine: the same without the rise; exponential: peak·decay^epoch; constant.
    """
    peak, total = cfg.learning_rate, max(1, steps_per_epoch * cfg.epochs)
    if cfg.lr_schedule == "constant":
        return peak
    if cfg.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(peak, decay_steps=steps_per_epoch,
                                                           decay_rate=cfg.lr_decay)
    warm = cfg.warmup_epochs * steps_per_epoch if cfg.lr_schedule == "onecycle" else 0
    warm = int(min(round(warm), total - 1))
    if warm <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total, alpha=FLOOR)
    return keras.optimizers.schedules.CosineDecay(peak / 25, decay_steps=total - warm, alpha=FLOOR,
                                                  warmup_target=peak, warmup_steps=warm)


def augmentation(cfg: Config) -> list[layers.Layer]:
    """Random rotation, zoom and shift layers (identity at inference), empty if switched off."""
    if not cfg.augment:
        return []
    out: list[layers.Layer] = []
    seed = cfg.seed + 100_003 * cfg.model_seed
    if cfg.rotation > 0:
        out.append(layers.RandomRotation(cfg.rotation / 360.0, fill_mode="constant", seed=seed))
    if cfg.zoom > 0:
        out.append(layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 1))
    if cfg.shift > 0:
        out.append(layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 2))
    return out


def build_model(cfg: Config, steps_per_epoch: int = 1) -> keras.Model:
    """A fresh compiled model of family `cfg.model` in its saved form (float32, Keras layers)."""
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for layer in augmentation(cfg):
        x = layer(x)
    x = MODELS[cfg.model](x, cfg)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name=OUTPUT)(x)
    model = keras.Model(inputs, outputs, name=cfg.model)
    _compile(model, cfg, steps_per_epoch, "float32")
    return model


def _compile(model: keras.Model, cfg: Config, steps_per_epoch: int, precision: str,
             steps_per_execution: int = 1) -> None:
    """Compile with the run's optimizer, schedule, loss and metric."""
    adam = keras.optimizers.Adam(learning_rate=schedule(cfg, steps_per_epoch),
                                 beta_1=cfg.adam_beta_1, beta_2=cfg.adam_beta_2,
                                 use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99)
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
    optimizer = keras.optimizers.LossScaleOptimizer(adam) if precision == "mixed_float16" else adam
    # One-hot labels (see `one_hot`) let the built-in loss smooth them; "accuracy" then means
    # categorical accuracy, so the metric names (val_accuracy) stay the same.
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution,
                  jit_compile=False)  # XLA measured 6-8× slower than oneDNN on CPU


# --- the two forms of a model ---------------------------------------------------------------

def training_form(saved: keras.Model, cfg: Config, steps_per_epoch: int,
                  precision: str | None = None, fused_bn: bool = True) -> keras.Model:
    """`saved` rebuilt to train fast, holding the same state: BatchNorm on the fused kernel and
    the run's precision (`cfg.precision`, resolved; or `precision`), compiled as build_model."""
    precision = precision or cfg.precision
    if precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(f"precision {precision!r}: resolve it first (pipeline.machine.plan)")

    def clone(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if isinstance(layer, FLOAT32_LAYERS) or layer.name == OUTPUT:
            return layer.__class__.from_config(config)
        config["dtype"] = precision
        if fused_bn and type(layer) is layers.BatchNormalization:
            return FusedBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    model = keras.models.clone_model(saved, clone_function=clone)
    _compile(model, cfg, steps_per_epoch, precision, STEPS_PER_EXECUTION)
    copy_state(saved, model)
    return model


def copy_state(src: keras.Model, dst: keras.Model) -> None:
    """Copy weights, BatchNorm statistics, random-number streams and the optimizer's state from
    `src` into `dst`, a model of the same layers in another form."""
    dst.set_weights(src.get_weights())
    for a, b in zip(seed_generators(src), seed_generators(dst), strict=True):
        b.state.assign(a.state.value)
    opt_src, opt_dst = _inner(src.optimizer), _inner(dst.optimizer)
    if opt_src.built:
        if not opt_dst.built:
            opt_dst.build(dst.trainable_variables)
        for a, b in zip(opt_src.variables, opt_dst.variables, strict=True):
            b.assign(a.value)


def _inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer itself, inside a loss-scaling wrapper (mixed_float16) or not."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """The random-number streams of the model's augmentation and dropout layers, in layer order."""
    return [v for layer in model.layers for v in vars(layer).values()
            if isinstance(v, keras.random.SeedGenerator)]


def build_state(model: keras.Model) -> None:
    """Create the optimizer's and the metrics' variables now, with one eager step on a blank batch.

    Keras otherwise creates them inside the first traced training step, and TensorFlow then
    traces that step a second time (measured: ~1–2 s a model, most of a small fold's fixed cost).
    Call it before `fit`; inference only: no weight, statistic or random stream changes.
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    x = np.zeros((1, *INPUT_SHAPE), dtype=np.uint8)
    y = np.zeros((1, NUM_CLASSES), dtype=np.float32)
    y_pred = model(x, training=False)
    model.compute_loss(x, y, y_pred)
    model.compute_metrics(x, y, y_pred, None)
    model.reset_metrics()


def average_weights(model: keras.Model, x: np.ndarray, batch_size: int, seed: int) -> None:
    """Put the optimizer's moving average of the weights (`ema`) into the model, with BatchNorm
    statistics recomputed for them on `x`."""
    # fit() swaps the averages in when it ends; a fold resumed after its last epoch did not fit.
    model.optimizer.finalize_variable_values(model.trainable_weights)
    refresh_batchnorm(model, x, batch_size, seed=seed)


def refresh_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int, seed: int,
                      batches: int = 100) -> None:
    """Re-estimate every BatchNorm layer's moving statistics for the model's current weights.

    After weight averaging the moving statistics still follow the last raw weights; this averages
    the batch statistics of up to `batches` training-mode passes (augmentation and dropout on, as
    in training) over images drawn from `x` (about one pass over `x` at most).
    """
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    if not norms:
        return
    batches = max(1, min(batches, math.ceil(len(x) / batch_size)))
    rng = np.random.default_rng(seed)
    momenta = [layer.momentum for layer in norms]
    try:
        for k in range(batches):
            # moving ← moving·k/(k+1) + batch/(k+1): the running mean of the batches so far
            for layer in norms:
                layer.momentum = k / (k + 1)
            model(x[rng.integers(0, len(x), batch_size)], training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def one_hot(y: np.ndarray) -> np.ndarray:
    """Integer labels as the float32 one-hot rows the compiled loss expects."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def load_model(path: str | Path) -> keras.Model:
    """Load a saved fold model, compiled, in Keras safe mode (no arbitrary code from the file).

    Fold models hold only built-in Keras objects, so plain `keras.models.load_model` loads them
    the same way anywhere, without this package.
    """
    return keras.models.load_model(path, safe_mode=True, compile=True)
