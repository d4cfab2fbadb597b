"""Training speed measured on this machine: images/s of a run's model in its precision, batch size
and threads, timed over an epoch of a few hundred images after a compiling warm-up.

`train` calibrates a run with a budget before planning it (pipeline.machine.budget), in each
precision the plan weighs (pipeline.machine.plan.precision_candidates); scripts/benchmark.py
times every form with the same function.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import Config

CALIBRATION_IMAGES = 1024  # timed per precision: about a second on a 2-core CPU
# The median of three epochs: a single one, slowed by the host for a second, once measured
# bfloat16 at 780 images/s against 1,568 a run before on the same AMD EPYC, and the plan took
# float32; the best of three would plan on the fastest second the host gave.
CALIBRATION_REPEATS = 3


def train_speed(cfg: Config, x: np.ndarray, y: np.ndarray, n: int, precision: str,
                fused_bn: bool = True, barrier: Any = None, repeats: int = 1,
                pick: Callable[[list[float]], float] = max) -> float:
    """Training images/s of `cfg`'s model on x[:n] in `precision`: of `repeats` epochs after a
    compiling warm-up, the one `pick` takes (`barrier`: wait for the other timed processes first)."""
    import keras

    from pipeline.modeling.model import build_model, one_hot, training_form

    keras.utils.set_random_seed(0)
    y = one_hot(y)  # what the compiled loss expects, as in `train`
    steps = max(1, n // cfg.batch_size)
    model = training_form(build_model(cfg, steps_per_epoch=steps), cfg, steps,
                          precision=precision, fused_bn=fused_bn)
    warm = min(n, 4 * cfg.batch_size)
    model.fit(x[:warm], y[:warm], batch_size=cfg.batch_size, epochs=1, verbose=0)
    if barrier is not None:
        barrier.wait()  # the workers time the same seconds of the machine
    speeds = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.fit(x[:n], y[:n], batch_size=cfg.batch_size, epochs=1, verbose=0)
        speeds.append(n / (time.perf_counter() - t))
    return pick(speeds)


def calibrate(cfg: Config, x: np.ndarray, y: np.ndarray, precisions: list[str]) -> dict[str, float]:
    """Training images/s of `cfg`'s model in each of `precisions`, in this process as its
    TensorFlow is set up (the threads one model of the plan gets)."""
    n = min(len(x), max(CALIBRATION_IMAGES, 4 * cfg.batch_size))
    return {p: train_speed(cfg, x, y, n, p, repeats=CALIBRATION_REPEATS, pick=statistics.median)
            for p in precisions}
