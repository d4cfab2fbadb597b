"""The hyperparameter search space, written once as Optuna distributions: a trial's suggestions,
a new study's baseline trial and the check of `--enqueue` items all derive from `SPACE`.

    params = suggest(trial, pinned={"model": "simple"}, epochs=(3, 6))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pipeline import config as config_mod
from pipeline.config import LR_SCHEDULES, MODEL_NAMES, Config, keys_with
from pipeline.errors import UserError
from pipeline.files import read_json
from pipeline.tuning.study import Budget

if TYPE_CHECKING:
    import optuna

# In the order a trial draws them: the seeded sampler's draws depend on it.
SPACE: dict[str, BaseDistribution] = {
    "model": CategoricalDistribution(MODEL_NAMES),
    # 64 filters with kernel 5 cost ~10× the default per epoch on CPU.
    "filters": CategoricalDistribution((16, 24, 32, 48)),
    "kernel_size": CategoricalDistribution((3, 5)),
    "dropout": FloatDistribution(0.0, 0.5),
    "dense_units": CategoricalDistribution((64, 128, 256)),
    "dense_dropout": FloatDistribution(0.0, 0.5),
    "batch_size": CategoricalDistribution((32, 64, 128, 256)),
    "learning_rate": FloatDistribution(1e-4, 2e-2, log=True),
    "lr_schedule": CategoricalDistribution(LR_SCHEDULES),
    # The default budget's range; a study searches its own (`bounded`).
    "epochs": IntDistribution(Budget.min_epochs, Budget.max_epochs),
    "warmup_epochs": FloatDistribution(0.0, 3.0),
    "lr_decay": FloatDistribution(0.5, 0.95),
    "rotation": FloatDistribution(0.0, 20.0),
    "zoom": FloatDistribution(0.0, 0.2),
    "shift": FloatDistribution(0.0, 0.2),
}
# A key searched only when its test holds for the trial's values so far (pinned ones included):
# each schedule's own parameter with that schedule, the augmentation magnitudes with augmentation.
ONLY_WHEN: dict[str, Callable[[dict[str, Any]], bool]] = {
    "warmup_epochs": lambda p: p["lr_schedule"] == "onecycle",
    "lr_decay": lambda p: p["lr_schedule"] == "exponential",
    **dict.fromkeys(("rotation", "zoom", "shift"), lambda p: bool(p.get("augment", True))),
}
# Config keys that say how a search or a run is executed, not what the model is: never copied
# into best_params.json, so they stay the training command's own choice.
NOT_HYPERPARAMETERS = keys_with("split", "prediction", "source", "record", "execution",
                                "ensemble", "numerics")


def bounded(epochs: tuple[int, int]) -> dict[str, BaseDistribution]:
    """The search space with a study's epoch range (a single value when epochs is pinned)."""
    return {**SPACE, "epochs": IntDistribution(*epochs)}


def _draw(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """`trial`'s value for `name` from `dist`, through the public suggest_* API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def suggest(trial: optuna.Trial, pinned: dict[str, Any], epochs: tuple[int, int]) -> dict[str, Any]:
    """One trial's hyperparameters from the search space; pinned keys keep their pinned value."""
    p: dict[str, Any] = {}
    for name, dist in bounded(epochs).items():
        if name in ONLY_WHEN and not ONLY_WHEN[name]({**pinned, **p}):
            continue
        p[name] = pinned[name] if name in pinned else _draw(trial, name, dist)
    # Pinned keys outside the space (label_smoothing, augment, …) are part of the result too.
    p.update({k: v for k, v in pinned.items() if k not in NOT_HYPERPARAMETERS})
    return p


def baseline_params(base: Config, pinned: dict[str, Any], epochs: tuple[int, int]) -> dict[str, Any]:
    """The base config's values for the searched keys, to enqueue as a study's trial 0."""
    out: dict[str, Any] = {}
    for key, dist in bounded(epochs).items():
        value = getattr(base, key)
        if key in pinned:
            continue
        if isinstance(dist, IntDistribution):  # epochs: the base's, brought into the range
            out[key] = min(max(value, dist.low), dist.high)
        elif isinstance(dist, CategoricalDistribution) and value in dist.choices:
            out[key] = value
        elif isinstance(dist, FloatDistribution) and dist.low <= value <= dist.high:
            out[key] = value
    return out


def read_enqueue(path: Path, base: Config) -> tuple[dict[str, Any], ...]:
    """Parameter sets to try first, from a JSON list of {key: value} objects."""
    data = read_json(path) if path.is_file() else None
    if data is None:
        raise UserError(f"--enqueue {path}: file not found")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise UserError(f"--enqueue {path}: expected a JSON list of objects like "
                        '[{"learning_rate": 0.001, "model": "deep"}]')
    out = []
    for i, item in enumerate(data, start=1):
        unknown = sorted(set(item) - set(SPACE))
        if unknown:
            raise UserError(f"--enqueue {path}: item {i}: {', '.join(unknown)} not searched "
                            f"(searched keys: {', '.join(SPACE)})")
        cfg = config_mod.from_dict({**base.to_dict(), **item}, f"--enqueue {path}: item {i}")
        params = {k: getattr(cfg, k) for k in item}
        for k, v in params.items():
            # Numbers outside a range are allowed: Optuna tries them as given (with a warning).
            dist = SPACE[k]
            if isinstance(dist, CategoricalDistribution) and v not in dist.choices:
                raise UserError(f"--enqueue {path}: item {i}: {k}={v!r} is not one of "
                                f"{', '.join(map(str, dist.choices))}")
        out.append(params)
    return tuple(out)
