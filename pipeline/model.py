"""Model registry: builder functions by name, each configured by the run's hyperparameters.

Every model takes uint8 images (N, 28, 28, 1); scaling to [0, 1] and augmentation are layers
inside the model, so training and prediction see the same preprocessing and augmentation is
off at inference.

    model = build_model(cfg, steps_per_epoch=263)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import layers, ops

from pipeline.config import Config

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
# Keras' default 0.99 needs hundreds of steps before the moving statistics are usable;
# short runs (the sample, tuning trials) have far fewer.
BN_MOMENTUM = 0.9


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


def deep(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """Two BatchNorm/ReLU double-conv blocks with max-pooling and dropout, then a dense head."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, cfg.kernel_size)
        x = _conv_bn(x, width, cfg.kernel_size)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(cfg.dropout)(x)
    return _dense_head(x, cfg)


def lean(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """Like `deep` but with unpadded convs (28→24→12→8→4): half the multiply-adds per image."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, cfg.kernel_size, padding="valid")
        x = _conv_bn(x, width, cfg.kernel_size, padding="valid")
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(cfg.dropout)(x)
    return _dense_head(x, cfg)


def strided(x: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """Like `deep` but downsampling with a learned 5×5 stride-2 conv instead of pooling."""
    for width in (cfg.filters, cfg.filters * 2):
        x = _conv_bn(x, width, cfg.kernel_size)
        x = _conv_bn(x, width, cfg.kernel_size)
        x = _conv_bn(x, width, 5, strides=2)
        x = layers.Dropout(cfg.dropout)(x)
    return _dense_head(x, cfg)


MODELS: dict[str, Callable[[keras.KerasTensor, Config], keras.KerasTensor]] = {
    "simple": simple,
    "deep": deep,
    "lean": lean,
    "strided": strided,
}


@keras.saving.register_keras_serializable(package="pipeline")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step learning rate: one-cycle, cosine, exponential or constant."""

    def __init__(self, kind: str, peak: float, steps_per_epoch: int, epochs: int,
                 warmup_epochs: float = 1.0, decay: float = 0.85) -> None:
        self.kind, self.peak = kind, float(peak)
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.warmup_epochs, self.decay = float(warmup_epochs), float(decay)

    def __call__(self, step):  # type: ignore[no-untyped-def]
        step = ops.cast(step, "float32")
        total = float(max(1, self.steps_per_epoch * self.epochs))
        if self.kind == "constant":
            return ops.full((), self.peak)
        if self.kind == "exponential":
            return self.peak * ops.power(self.decay, step / self.steps_per_epoch)
        warm = self.warmup_epochs * self.steps_per_epoch if self.kind == "onecycle" else 0.0
        warm = min(warm, total - 1.0)
        floor = self.peak * 1e-4
        progress = ops.clip((step - warm) / max(1.0, total - warm), 0.0, 1.0)
        cosine = floor + 0.5 * (self.peak - floor) * (1.0 + ops.cos(math.pi * progress))
        if warm <= 0:
            return cosine
        # One-cycle: linear rise from peak/25 to the peak, then cosine annealing to ~0.
        rise = self.peak / 25 + (self.peak - self.peak / 25) * step / warm
        return ops.where(step < warm, rise, cosine)

    def get_config(self) -> dict:
        return {"kind": self.kind, "peak": self.peak, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "warmup_epochs": self.warmup_epochs, "decay": self.decay}


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
    """A fresh compiled model of family `cfg.model` with the run's schedule and loss."""
    inputs = keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for layer in augmentation(cfg):
        x = layer(x)
    x = MODELS[cfg.model](x, cfg)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=cfg.model)
    schedule = LearningRate(cfg.lr_schedule, cfg.learning_rate, steps_per_epoch, cfg.epochs,
                            cfg.warmup_epochs, cfg.lr_decay)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=_loss(cfg.label_smoothing), metrics=["accuracy"],
                  jit_compile=False)  # XLA measured 6-8× slower than oneDNN on CPU
    return model


def _loss(smoothing: float) -> keras.losses.Loss | str:
    if smoothing <= 0:
        return "sparse_categorical_crossentropy"
    return SmoothedSparseCE(smoothing)


@keras.saving.register_keras_serializable(package="pipeline")
class SmoothedSparseCE(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, smoothing: float = 0.1, name: str = "smoothed_sparse_ce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):  # type: ignore[no-untyped-def]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), NUM_CLASSES)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing}


def load_model(path: str) -> keras.Model:
    """Load a saved fold model in Keras safe mode (no arbitrary code from the file)."""
    return keras.models.load_model(path, safe_mode=True, compile=True)
